//! The host side of the `stream-function` world: what a function can reach,
//! and the check of every call against the function's grants.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Bson, Document},
    options::UpdateOptions,
};
use wasmtime::StoreLimits;

use super::runnel::function::{clock, config, documents, logging, mail, types};
use crate::{mail::MailError, mail::Mailer, storage};

/// The services behind the capabilities, shared by all functions.
pub struct Capabilities {
    pub database: Database,
    pub mailer: Mailer,
}

/// What one function may use, from its manifest.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Collections it may read.
    pub read: HashSet<String>,
    /// Collections it may write (and read).
    pub write: HashSet<String>,
    /// Whether it may send mail.
    pub mail: bool,
    /// Its configuration values, resolved at deployment.
    pub config: HashMap<String, String>,
}

/// The per-call state of one instance.
pub struct HostState {
    function: Arc<str>,
    grants: Arc<Grants>,
    capabilities: Arc<Capabilities>,
    pub(super) limits: StoreLimits,
}

impl HostState {
    pub(super) fn new(
        function: Arc<str>,
        grants: Arc<Grants>,
        capabilities: Arc<Capabilities>,
        limits: StoreLimits,
    ) -> Self {
        HostState { function, grants, capabilities, limits }
    }

    fn collection(&self, name: &str, write: bool) -> Result<mongodb::Collection<Document>, documents::DocumentError> {
        let granted = self.grants.write.contains(name) || (!write && self.grants.read.contains(name));
        if !granted {
            let access = if write { "write" } else { "read" };
            tracing::warn!(function = %self.function, collection = name, access, "document access refused");
            return Err(documents::DocumentError::NotPermitted(format!(
                "{access} access to collection '{name}' is not granted"
            )));
        }
        Ok(self.capabilities.database.collection(name))
    }
}

/// Parses Extended JSON into a document; `what` names the argument.
fn parse_document(what: &str, json: &str) -> Result<Document, documents::DocumentError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| documents::DocumentError::Invalid(format!("{what} is not JSON: {e}")))?;
    match Bson::try_from(value) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(documents::DocumentError::Invalid(format!("{what} must be a JSON object"))),
        Err(e) => Err(documents::DocumentError::Invalid(format!("{what} is not Extended JSON: {e}"))),
    }
}

fn database_error(e: mongodb::error::Error) -> documents::DocumentError {
    use mongodb::error::ErrorKind;
    if storage::is_duplicate_key(&e) {
        return documents::DocumentError::Conflict(e.to_string());
    }
    match e.kind.as_ref() {
        // The server refused what was asked: retrying will not help.
        ErrorKind::Command(_) | ErrorKind::Write(_) | ErrorKind::InvalidArgument { .. } => {
            documents::DocumentError::Invalid(e.to_string())
        }
        _ => documents::DocumentError::Unavailable(e.to_string()),
    }
}

impl types::Host for HostState {}

impl documents::Host for HostState {
    async fn insert_one(&mut self, collection: String, document: String) -> Result<String, documents::DocumentError> {
        let target = self.collection(&collection, true)?;
        let mut doc = parse_document("document", &document)?;
        // String ids only: the API addresses documents by them.
        let id = match doc.get("_id") {
            Some(Bson::String(id)) if !id.is_empty() => id.clone(),
            Some(_) => {
                return Err(documents::DocumentError::Invalid("`_id` must be a non-empty string".into()));
            }
            None => {
                let id = crate::domain::new_id();
                doc.insert("_id", id.clone());
                id
            }
        };
        target.insert_one(doc).await.map_err(database_error)?;
        Ok(id)
    }

    async fn find(&mut self, collection: String, filter: String, limit: u32) -> Result<Vec<String>, documents::DocumentError> {
        let target = self.collection(&collection, false)?;
        let filter = parse_document("filter", &filter)?;
        let cursor = target
            .find(filter)
            .limit(i64::from(limit.clamp(1, 1000)))
            .await
            .map_err(database_error)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(database_error)?;
        Ok(docs
            .into_iter()
            .map(|d| Bson::Document(d).into_relaxed_extjson().to_string())
            .collect())
    }

    async fn update_many(
        &mut self,
        collection: String,
        filter: String,
        update: String,
        array_filters: Vec<String>,
    ) -> Result<documents::UpdateResult, documents::DocumentError> {
        let target = self.collection(&collection, true)?;
        let filter = parse_document("filter", &filter)?;
        let update = parse_document("update", &update)?;
        let array_filters = array_filters
            .iter()
            .map(|f| parse_document("array filter", f))
            .collect::<Result<Vec<_>, _>>()?;
        let options = UpdateOptions::builder()
            .array_filters((!array_filters.is_empty()).then_some(array_filters))
            .build();
        let result = target
            .update_many(filter, update)
            .with_options(options)
            .await
            .map_err(database_error)?;
        Ok(documents::UpdateResult { matched: result.matched_count, modified: result.modified_count })
    }
}

impl mail::Host for HostState {
    async fn send(&mut self, message: mail::Message) -> Result<(), mail::MailError> {
        if !self.grants.mail {
            tracing::warn!(function = %self.function, "mail refused: not granted");
            return Err(mail::MailError::NotPermitted("mail is not granted to this function".into()));
        }
        self.capabilities
            .mailer
            .send(&message.to, &message.subject, &message.body)
            .await
            .map_err(|e| match e {
                MailError::Invalid(m) => mail::MailError::Invalid(m),
                MailError::Unavailable(m) => mail::MailError::Unavailable(m),
            })
    }
}

impl config::Host for HostState {
    async fn get(&mut self, name: String) -> Option<String> {
        self.grants.config.get(&name).cloned()
    }
}

impl logging::Host for HostState {
    async fn log(&mut self, level: logging::Level, message: String) {
        let function = &*self.function;
        match level {
            logging::Level::Trace => tracing::trace!(function, "{message}"),
            logging::Level::Debug => tracing::debug!(function, "{message}"),
            logging::Level::Info => tracing::info!(function, "{message}"),
            logging::Level::Warn => tracing::warn!(function, "{message}"),
            logging::Level::Error => tracing::error!(function, "{message}"),
        }
    }
}

impl clock::Host for HostState {
    async fn now_ms(&mut self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}
