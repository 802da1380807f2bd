//! The database connection the platform (versions, the documents
//! capability) and the application share.

use std::time::Duration;

use anyhow::Context;

use crate::platform::redact;
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
        ClientOptions::parse(uri).await.with_context(|| format!("RUNNEL_MONGODB_URI: cannot parse '{}'", redact::url(uri)))?;
    options.app_name.get_or_insert_with(|| "runnel".into());
    options.server_selection_timeout.get_or_insert(timeout);
    options.connect_timeout.get_or_insert(timeout);
    let client = Client::with_options(options).with_context(|| format!("RUNNEL_MONGODB_URI: cannot use '{}'", redact::url(uri)))?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 })
        .await
        .with_context(|| format!("RUNNEL_MONGODB_URI: no MongoDB server answers at '{}'", redact::url(uri)))?;
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

/// What retrying can do about a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The server was unreachable, slow, stepping down or short of a write
    /// concern: the same request may succeed later.
    Unavailable,
    /// A document with the same key exists.
    Conflict,
    /// The request itself is wrong (bad operator, failed validation): it
    /// will fail again.
    Invalid,
}

/// Server error codes that say "not now" rather than "never": network and
/// time limits, elections, shutdowns, write concerns.
const RETRYABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    100,   // UnsatisfiableWriteConcern
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    251,   // NoSuchTransaction
];

/// Classifies `e` by what retrying can fix.
pub fn classify(e: &mongodb::error::Error) -> ErrorClass {
    if is_duplicate_key(e) {
        return ErrorClass::Conflict;
    }
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return ErrorClass::Unavailable;
    }
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => return ErrorClass::Unavailable,
        ErrorKind::InvalidArgument { .. }
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::BsonDeserialization(_) => return ErrorClass::Invalid,
        // I/O, server selection, pools cleared, DNS, authentication, …
        _ => return ErrorClass::Unavailable,
    };
    classify_code(code)
}

/// Classifies a server error code (of a write error in a command's reply,
/// say) by what retrying can fix.
pub fn classify_code(code: i32) -> ErrorClass {
    match code {
        11000 => ErrorClass::Conflict,
        c if RETRYABLE_CODES.contains(&c) => ErrorClass::Unavailable,
        _ => ErrorClass::Invalid,
    }
}
