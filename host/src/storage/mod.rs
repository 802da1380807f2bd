//! Storage: the MongoDB database behind the HTTP API and the functions'
//! document capability. Resources keep the document shapes of the original
//! services (`_id` plus camelCase fields, dates as BSON dates).

mod repo;
pub mod comicbooks;
pub mod persons;
pub mod store_alerts;
pub mod stores;

use std::time::Duration;

use anyhow::Context;
use mongodb::{Client, Database, bson::doc, options::ClientOptions};

pub use repo::{Page, Repo, StorageError, is_duplicate_key};

/// Connects to `uri` and checks that the server answers within `timeout`.
/// Errors name the setting at fault.
pub async fn connect(uri: &str, database: &str, timeout: Duration) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .with_context(|| format!("RUNNEL_MONGODB_URI: cannot parse '{uri}'"))?;
    options.app_name.get_or_insert_with(|| "runnel".into());
    options.server_selection_timeout.get_or_insert(timeout);
    options.connect_timeout.get_or_insert(timeout);
    let client = Client::with_options(options)
        .with_context(|| format!("RUNNEL_MONGODB_URI: cannot use '{uri}'"))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 })
        .await
        .with_context(|| format!("RUNNEL_MONGODB_URI: no MongoDB server answers at '{uri}'"))?;
    Ok(db)
}
