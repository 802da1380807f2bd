//! `documents`: insert, find and update documents in the host's database,
//! limited to the collections the manifest grants.
//!
//! ```toml
//! [capabilities.documents]
//! read = ["persons"]        # collections it may read
//! write = ["comicbooks"]    # collections it may read and write
//! ```

use std::{collections::HashSet, sync::Arc};

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Bson, Document},
    options::UpdateOptions,
};
use serde::{Deserialize, Deserializer};
use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::platform::{runtime::bindings::runnel::function::documents as wit, storage};

/// The service: the host's database.
pub struct Documents {
    pub database: Database,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(default, deserialize_with = "collections")]
    pub read: Vec<String>,
    #[serde(default, deserialize_with = "collections")]
    pub write: Vec<String>,
}

/// Collection names a function may be granted: not empty, not the server's
/// own (`system.*`) nor the host's (`runnel_*`).
fn collections<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    for name in &names {
        if name.is_empty() || name.starts_with("system.") || name.starts_with("runnel_") || name.contains(['$', '\0']) {
            return Err(serde::de::Error::custom(format!(
                "'{name}' is not a collection a function may use"
            )));
        }
    }
    Ok(names)
}

#[derive(Debug)]
pub struct Resolved {
    read: HashSet<String>,
    write: HashSet<String>,
}

pub struct State {
    function: Arc<str>,
    grant: Arc<Resolved>,
    database: Database,
}

impl Capability for Documents {
    type Grant = Grant;
    type Resolved = Resolved;
    type State = State;

    fn resolve(&self, _: &str, grant: &Grant, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
        Ok(Resolved { read: grant.read.iter().cloned().collect(), write: grant.write.iter().cloned().collect() })
    }

    fn instance(&self, function: &Arc<str>, resolved: &Arc<Resolved>) -> State {
        State { function: function.clone(), grant: resolved.clone(), database: self.database.clone() }
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

impl State {
    fn collection(&self, name: &str, write: bool) -> Result<mongodb::Collection<Document>, wit::DocumentError> {
        let granted = self.grant.write.contains(name) || (!write && self.grant.read.contains(name));
        if !granted {
            let access = if write { "write" } else { "read" };
            tracing::warn!(function = %self.function, collection = name, access, "document access refused");
            return Err(wit::DocumentError::NotPermitted(format!(
                "{access} access to collection '{name}' is not granted"
            )));
        }
        Ok(self.database.collection(name))
    }
}

/// Parses Extended JSON into a document; `what` names the argument.
fn parse_document(what: &str, json: &str) -> Result<Document, wit::DocumentError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| wit::DocumentError::Invalid(format!("{what} is not JSON: {e}")))?;
    match Bson::try_from(value) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(wit::DocumentError::Invalid(format!("{what} must be a JSON object"))),
        Err(e) => Err(wit::DocumentError::Invalid(format!("{what} is not Extended JSON: {e}"))),
    }
}

fn database_error(e: mongodb::error::Error) -> wit::DocumentError {
    use mongodb::error::ErrorKind;
    if storage::is_duplicate_key(&e) {
        return wit::DocumentError::Conflict(e.to_string());
    }
    match e.kind.as_ref() {
        // The server refused what was asked: retrying will not help.
        ErrorKind::Command(_) | ErrorKind::Write(_) | ErrorKind::InvalidArgument { .. } => {
            wit::DocumentError::Invalid(e.to_string())
        }
        _ => wit::DocumentError::Unavailable(e.to_string()),
    }
}

impl wit::Host for State {
    async fn insert_one(&mut self, collection: String, document: String) -> Result<String, wit::DocumentError> {
        let target = self.collection(&collection, true)?;
        let mut doc = parse_document("document", &document)?;
        // String ids only: the API addresses documents by them.
        let id = match doc.get("_id") {
            Some(Bson::String(id)) if !id.is_empty() => id.clone(),
            Some(_) => return Err(wit::DocumentError::Invalid("`_id` must be a non-empty string".into())),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                doc.insert("_id", id.clone());
                id
            }
        };
        target.insert_one(doc).await.map_err(database_error)?;
        Ok(id)
    }

    async fn find(&mut self, collection: String, filter: String, limit: u32) -> Result<Vec<String>, wit::DocumentError> {
        let target = self.collection(&collection, false)?;
        let filter = parse_document("filter", &filter)?;
        let cursor = target.find(filter).limit(i64::from(limit.clamp(1, 1000))).await.map_err(database_error)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(database_error)?;
        Ok(docs.into_iter().map(|d| Bson::Document(d).into_relaxed_extjson().to_string()).collect())
    }

    async fn update_many(
        &mut self,
        collection: String,
        filter: String,
        update: String,
        array_filters: Vec<String>,
    ) -> Result<wit::UpdateResult, wit::DocumentError> {
        let target = self.collection(&collection, true)?;
        let filter = parse_document("filter", &filter)?;
        let update = parse_document("update", &update)?;
        let array_filters =
            array_filters.iter().map(|f| parse_document("array filter", f)).collect::<Result<Vec<_>, _>>()?;
        let options = UpdateOptions::builder().array_filters((!array_filters.is_empty()).then_some(array_filters)).build();
        let result = target.update_many(filter, update).with_options(options).await.map_err(database_error)?;
        Ok(wit::UpdateResult { matched: result.matched_count, modified: result.modified_count })
    }
}
