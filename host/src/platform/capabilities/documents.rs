//! `documents`: insert, find and update documents in the host's database,
//! limited to the collections the manifest grants.
//!
//! ```toml
//! [capabilities.documents]
//! read = ["persons"]        # collections it may read
//! write = ["comicbooks"]    # collections it may read and write
//! ```
//!
//! Every call is journaled (see [`crate::platform::journal`]): a record
//! delivered again reads what its first delivery read and does not write
//! twice. A document inserted without an `_id` gets one derived from the
//! call, so an insert repeated after a crash meets a duplicate key and is
//! answered as done. Every call is bounded in time: a database that does not
//! answer makes it return `unavailable`.

use std::{collections::HashSet, future::Future, sync::Arc, time::Duration};

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Bson, Document, doc},
    options::{UpdateModifications, UpdateOptions},
};
use serde::{Deserialize, Deserializer};
use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::platform::{
    journal::{Calls, JournalUnavailable},
    runtime::bindings::runnel::function::documents as wit,
    storage::{self, ErrorClass},
};

/// The service: the host's database, and the bound on every call.
pub struct Documents {
    pub database: Database,
    pub timeout: Duration,
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
    timeout: Duration,
    calls: Calls,
}

impl Capability for Documents {
    type Grant = Grant;
    type Resolved = Resolved;
    type State = State;

    fn resolve(&self, _: &str, grant: &Grant, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
        Ok(Resolved { read: grant.read.iter().cloned().collect(), write: grant.write.iter().cloned().collect() })
    }

    fn instance(&self, function: &Arc<str>, resolved: &Arc<Resolved>, calls: &Calls) -> State {
        State {
            function: function.clone(),
            grant: resolved.clone(),
            database: self.database.clone(),
            timeout: self.timeout,
            calls: calls.clone(),
        }
    }

    fn renew(&self, state: &mut State, _: &Arc<str>, _: &Arc<Resolved>, calls: &Calls) {
        state.calls.clone_from(calls);
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
    match parse_bson(what, json)? {
        Bson::Document(d) => Ok(d),
        _ => Err(wit::DocumentError::Invalid(format!("{what} must be a JSON object"))),
    }
}

/// The most updates one `update-each` takes.
const MAX_STATEMENTS: usize = 1000;

/// An update: a document of update operators, or an aggregation pipeline
/// (an array of stages), which can change arrays that only some documents
/// have.
fn parse_update(json: &str) -> Result<UpdateModifications, wit::DocumentError> {
    let stage = |stage: Bson| match stage {
        Bson::Document(d) => Some(d),
        _ => None,
    };
    match parse_update_bson(json)? {
        Bson::Document(d) => Ok(UpdateModifications::Document(d)),
        // Every stage is a document: checked there.
        Bson::Array(stages) => Ok(UpdateModifications::Pipeline(stages.into_iter().filter_map(stage).collect())),
        _ => Err(wit::DocumentError::Invalid("update must be a JSON object or an array of pipeline stages".into())),
    }
}

/// An update as BSON, checked to be a document or an array of documents.
fn parse_update_bson(json: &str) -> Result<Bson, wit::DocumentError> {
    match parse_bson("update", json)? {
        Bson::Array(stages) if !stages.iter().all(|stage| matches!(stage, Bson::Document(_))) => {
            Err(wit::DocumentError::Invalid("every stage of an update pipeline must be a JSON object".into()))
        }
        update @ (Bson::Document(_) | Bson::Array(_)) => Ok(update),
        _ => Err(wit::DocumentError::Invalid("update must be a JSON object or an array of pipeline stages".into())),
    }
}

/// One statement of an `update` command: `update` applied to every
/// document `filter` matches.
fn statement(filter: &str, update: &str, array_filters: &[String]) -> Result<Document, wit::DocumentError> {
    let q = parse_document("filter", filter)?;
    let u = parse_update_bson(update)?;
    let mut statement = doc! { "q": q, "u": u, "multi": true };
    if !array_filters.is_empty() {
        let parsed = array_filters.iter().map(|f| parse_document("array filter", f).map(Bson::Document)).collect::<Result<Vec<_>, _>>()?;
        statement.insert("arrayFilters", parsed);
    }
    Ok(statement)
}

/// The reply of an ordered `update` command: the counts it sums, or its
/// first write error (the one that stopped it), naming the update.
fn update_reply(reply: &Document) -> Result<wit::UpdateResult, wit::DocumentError> {
    let number = |d: &Document, key: &str| match d.get(key) {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n >= 0.0 => *n as u64,
        _ => 0,
    };
    if let Some(Bson::Document(first)) = reply.get_array("writeErrors").ok().and_then(|errors| errors.first()) {
        let code = i32::try_from(number(first, "code")).unwrap_or(0);
        let message = format!("update {}: {}", number(first, "index"), first.get_str("errmsg").unwrap_or("refused"));
        return Err(match storage::classify_code(code) {
            ErrorClass::Conflict => wit::DocumentError::Conflict(message),
            ErrorClass::Invalid => wit::DocumentError::Invalid(message),
            ErrorClass::Unavailable => wit::DocumentError::Unavailable(message),
        });
    }
    if let Ok(concern) = reply.get_document("writeConcernError") {
        let message = concern.get_str("errmsg").unwrap_or("write concern not satisfied");
        return Err(wit::DocumentError::Unavailable(format!("the updates were applied but not confirmed: {message}")));
    }
    Ok(wit::UpdateResult { matched: number(reply, "n"), modified: number(reply, "nModified") })
}

fn parse_bson(what: &str, json: &str) -> Result<Bson, wit::DocumentError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| wit::DocumentError::Invalid(format!("{what} is not JSON: {e}")))?;
    Bson::try_from(value).map_err(|e| wit::DocumentError::Invalid(format!("{what} is not Extended JSON: {e}")))
}

/// A database error, by what retrying can fix.
fn database_error(e: mongodb::error::Error) -> wit::DocumentError {
    match storage::classify(&e) {
        ErrorClass::Conflict => wit::DocumentError::Conflict(e.to_string()),
        ErrorClass::Invalid => wit::DocumentError::Invalid(e.to_string()),
        ErrorClass::Unavailable => wit::DocumentError::Unavailable(e.to_string()),
    }
}

fn journal_error(e: JournalUnavailable) -> wit::DocumentError {
    wit::DocumentError::Unavailable(e.to_string())
}

/// Whether a result is journaled: all but a database that was unavailable,
/// so that a later delivery tries again.
fn keep<T>(result: &Result<T, wit::DocumentError>) -> bool {
    !matches!(result, Err(wit::DocumentError::Unavailable(_)))
}

/// Runs a database operation within `timeout`.
async fn bounded<T>(timeout: Duration, op: impl Future<Output = Result<T, wit::DocumentError>>) -> Result<T, wit::DocumentError> {
    tokio::time::timeout(timeout, op).await.unwrap_or_else(|_| {
        Err(wit::DocumentError::Unavailable(format!("the database did not answer within {timeout:?}")))
    })
}

impl wit::Host for State {
    async fn insert_one(&mut self, collection: String, document: String) -> Result<String, wit::DocumentError> {
        let target = self.collection(&collection, true)?;
        let mut doc = parse_document("document", &document)?;
        // String ids only: the API addresses documents by them.
        let given = match doc.get("_id") {
            Some(Bson::String(id)) if !id.is_empty() => Some(id.clone()),
            Some(_) => return Err(wit::DocumentError::Invalid("`_id` must be a non-empty string".into())),
            None => None,
        };
        let timeout = self.timeout;
        let args = (&collection, &document);
        self.calls
            .run("documents.insert-one", true, &args, keep, |call| async move {
                let id = match given {
                    Some(id) => id,
                    None => {
                        let id = call.uuid().to_string();
                        doc.insert("_id", id.clone());
                        // Derived from the call: a duplicate key means an
                        // earlier delivery inserted it.
                        return bounded(timeout, async {
                            match target.insert_one(doc).await {
                                Ok(_) => Ok(id),
                                Err(e) if call.hex().is_some() && storage::is_duplicate_key(&e) => Ok(id),
                                Err(e) => Err(database_error(e)),
                            }
                        })
                        .await;
                    }
                };
                bounded(timeout, async { target.insert_one(doc).await.map(|_| id).map_err(database_error) }).await
            })
            .await
            .unwrap_or_else(|e| Err(journal_error(e)))
    }

    async fn find(&mut self, collection: String, filter: String, limit: u32) -> Result<Vec<String>, wit::DocumentError> {
        let target = self.collection(&collection, false)?;
        let parsed = parse_document("filter", &filter)?;
        let timeout = self.timeout;
        self.calls
            .run("documents.find", false, &(&collection, &filter, limit), keep, |_| {
                bounded(timeout, async move {
                    let cursor =
                        target.find(parsed).limit(i64::from(limit.clamp(1, 1000))).await.map_err(database_error)?;
                    let docs: Vec<Document> = cursor.try_collect().await.map_err(database_error)?;
                    Ok(docs.into_iter().map(|d| Bson::Document(d).into_relaxed_extjson().to_string()).collect())
                })
            })
            .await
            .unwrap_or_else(|e| Err(journal_error(e)))
    }

    async fn update_many(
        &mut self,
        collection: String,
        filter: String,
        update: String,
        array_filters: Vec<String>,
    ) -> Result<wit::UpdateResult, wit::DocumentError> {
        let target = self.collection(&collection, true)?;
        let parsed_filter = parse_document("filter", &filter)?;
        let parsed_update = parse_update(&update)?;
        let parsed_array_filters =
            array_filters.iter().map(|f| parse_document("array filter", f)).collect::<Result<Vec<_>, _>>()?;
        let options = UpdateOptions::builder()
            .array_filters((!parsed_array_filters.is_empty()).then_some(parsed_array_filters))
            .build();
        let timeout = self.timeout;
        self.calls
            .run("documents.update-many", true, &(&collection, &filter, &update, &array_filters), keep, |_| {
                bounded(timeout, async move {
                    let result =
                        target.update_many(parsed_filter, parsed_update).with_options(options).await.map_err(database_error)?;
                    Ok(wit::UpdateResult { matched: result.matched_count, modified: result.modified_count })
                })
            })
            .await
            .unwrap_or_else(|e| Err(journal_error(e)))
    }

    async fn update_each(
        &mut self,
        collection: String,
        updates: Vec<wit::UpdateStatement>,
    ) -> Result<wit::UpdateResult, wit::DocumentError> {
        self.collection(&collection, true)?;
        if updates.len() > MAX_STATEMENTS {
            return Err(wit::DocumentError::Invalid(format!("{} updates in one call; at most {MAX_STATEMENTS}", updates.len())));
        }
        if updates.is_empty() {
            return Ok(wit::UpdateResult { matched: 0, modified: 0 });
        }
        let statements = updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                statement(&u.filter, &u.update, &u.array_filters).map(Bson::Document).map_err(|e| match e {
                    wit::DocumentError::Invalid(m) => wit::DocumentError::Invalid(format!("update {i}: {m}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One `update` command (every server version has it), ordered: a
        // failing update stops the ones after it.
        let command = doc! { "update": &collection, "updates": statements, "ordered": true };
        let database = self.database.clone();
        let timeout = self.timeout;
        let args: Vec<(&str, &str, &[String])> =
            updates.iter().map(|u| (u.filter.as_str(), u.update.as_str(), u.array_filters.as_slice())).collect();
        self.calls
            .run("documents.update-each", true, &(&collection, &args), keep, |_| {
                bounded(timeout, async move { update_reply(&database.run_command(command).await.map_err(database_error)?) })
            })
            .await
            .unwrap_or_else(|e| Err(journal_error(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_reply_sums_or_names_the_failing_update() {
        let ok = update_reply(&doc! { "n": 5, "nModified": 3_i64, "ok": 1.0 }).unwrap();
        assert_eq!((ok.matched, ok.modified), (5, 3));
        let failed = doc! { "n": 2, "nModified": 2, "writeErrors": [{ "index": 1, "code": 2, "errmsg": "The path 'persons.INKER' must exist" }] };
        match update_reply(&failed) {
            Err(wit::DocumentError::Invalid(m)) => assert_eq!(m, "update 1: The path 'persons.INKER' must exist"),
            other => panic!("{other:?}"),
        }
        let duplicate = doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "dup" }] };
        assert!(matches!(update_reply(&duplicate), Err(wit::DocumentError::Conflict(_))));
        let stepped_down = doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 189, "errmsg": "stepped down" }] };
        assert!(matches!(update_reply(&stepped_down), Err(wit::DocumentError::Unavailable(_))));
        let unconfirmed = doc! { "n": 1, "nModified": 1, "writeConcernError": { "code": 64, "errmsg": "waiting" } };
        assert!(matches!(update_reply(&unconfirmed), Err(wit::DocumentError::Unavailable(_))));
    }

    #[test]
    fn a_statement_carries_its_array_filters_and_pipelines() {
        let s = statement(r#"{"a":1}"#, r#"{"$set":{"l.$[p].x":1}}"#, &[r#"{"p.id":2}"#.to_string()]).unwrap();
        assert_eq!(s, doc! { "q": { "a": 1 }, "u": { "$set": { "l.$[p].x": 1 } }, "multi": true, "arrayFilters": [{ "p.id": 2 }] });
        let p = statement("{}", r#"[{"$set":{"x":1}}]"#, &[]).unwrap();
        assert_eq!(p.get_array("u").unwrap().len(), 1);
        assert!(!p.contains_key("arrayFilters"));
        assert!(matches!(statement("[]", "{}", &[]), Err(wit::DocumentError::Invalid(_))));
        assert!(matches!(statement("{}", "3", &[]), Err(wit::DocumentError::Invalid(_))));
        assert!(matches!(statement("{}", "[1]", &[]), Err(wit::DocumentError::Invalid(m)) if m.contains("every stage")));
        assert!(matches!(parse_update(r#"[{"$set":{"x":1}}]"#), Ok(UpdateModifications::Pipeline(p)) if p.len() == 1));
    }
}
