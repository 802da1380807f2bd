//! The database connection the platform (versions, the documents
//! capability) and the application share.

use std::time::Duration;

use anyhow::Context;
use mongodb::{
    Client, Database,
    bson::doc,
    error::{ErrorKind, WriteFailure},
    options::ClientOptions,
};

/// Connects to `uri` and checks that the server answers within `timeout`.
/// Errors name the setting at fault.
pub async fn connect(uri: &str, database: &str, timeout: Duration) -> anyhow::Result<Database> {
    let mut options =
        ClientOptions::parse(uri).await.with_context(|| format!("RUNNEL_MONGODB_URI: cannot parse '{uri}'"))?;
    options.app_name.get_or_insert_with(|| "runnel".into());
    options.server_selection_timeout.get_or_insert(timeout);
    options.connect_timeout.get_or_insert(timeout);
    let client = Client::with_options(options).with_context(|| format!("RUNNEL_MONGODB_URI: cannot use '{uri}'"))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 })
        .await
        .with_context(|| format!("RUNNEL_MONGODB_URI: no MongoDB server answers at '{uri}'"))?;
    Ok(db)
}

/// Whether `e` is MongoDB's duplicate key error (code 11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(i) => i.write_errors.iter().flatten().any(|w| w.code == 11000),
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}
