//! `runnel-guest`: write Runnel functions in Rust.
//!
//! A function implements [`Guest`] (one callback, `handle`) and exports it
//! with [`export_function!`]; it is built with
//! `cargo build --target wasm32-wasip2` into a component. It is an ordinary
//! `std` crate: the host links a locked-down WASI (no files, network or
//! environment), so `println!` and panics end up in the function's log.
//!
//! What the crate adds to the bindings of `wit/runnel.wit`:
//! - `?` on capability errors: [`documents::DocumentError`] and
//!   [`mail::MailError`] convert into [`HandlerError`] (`unavailable` →
//!   retry later, anything else → give up);
//! - typed JSON: [`Message::json`] (bad input when the payload does not
//!   parse), [`documents::insert`], [`documents::find_as`],
//!   [`documents::update`], [`documents::update_all`], [`documents::date`];
//! - [`testing`]: run `handle` natively in `cargo test`, against an in-memory
//!   host (documents, mail, config, logs, clock), as ordinary unit tests.
//!
//! ```ignore
//! use runnel_guest::{Guest, HandlerError, Message, documents, mail};
//! struct MyFunction;
//! impl Guest for MyFunction {
//!     fn handle(message: Message) -> Result<(), HandlerError> {
//!         let event: serde_json::Value = message.json()?;
//!         documents::insert("events", &event)?;
//!         Ok(())
//!     }
//! }
//! runnel_guest::export_function!(MyFunction);
//! ```

/// The generated bindings of the `batch-stream-function` world (the
/// `stream-function` world and `handle-batch`). Functions use the modules
/// re-exported at the crate's root, which also run under [`testing`].
pub mod bindings {
    wit_bindgen::generate!({
        world: "batch-stream-function",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "runnel_guest::bindings",
    });
}

mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use bindings::runnel::function::types::Header;
pub use bindings::{HandlerError, Message};

/// A function: one callback, called for each record.
pub trait Guest {
    /// Handles one message. `Ok` lets the host commit its offset.
    fn handle(message: Message) -> Result<(), HandlerError>;
}

/// Exports `$function` (a [`Guest`]) as the component's `handle`, and as
/// its `handle-batch`, which calls `handle` for each message of a batch in
/// order (telling the host which one it is on, so that each message's
/// capability calls are journaled as its own) and stops at the first that
/// is not handled.
#[macro_export]
macro_rules! export_function {
    ($function:ty) => {
        const _: () = {
            struct RunnelExport;
            impl $crate::bindings::Guest for RunnelExport {
                fn handle(message: $crate::Message) -> ::core::result::Result<(), $crate::HandlerError> {
                    <$function as $crate::Guest>::handle(message)
                }
                fn handle_batch(
                    messages: ::std::vec::Vec<$crate::Message>,
                ) -> ::core::result::Result<(), (u32, $crate::HandlerError)> {
                    $crate::handle_batch(messages, <$function as $crate::Guest>::handle)
                }
            }
            $crate::bindings::__export_world!(RunnelExport with_types_in $crate::bindings);
        };
    };
}

/// The loop behind a function's `handle-batch`: `handle` for each message,
/// in order, until one is not handled (its index and error are the answer).
#[doc(hidden)]
pub fn handle_batch(
    messages: Vec<Message>,
    handle: impl Fn(Message) -> Result<(), HandlerError>,
) -> Result<(), (u32, HandlerError)> {
    for (index, message) in messages.into_iter().enumerate() {
        let index = index as u32;
        host::begin(index);
        handle(message).map_err(|e| (index, e))?;
    }
    Ok(())
}

use bindings::runnel::function as wit;

impl Message {
    /// The payload parsed as JSON into `T`; [`HandlerError::BadInput`] naming
    /// what is wrong when it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload).map_err(|e| HandlerError::BadInput(format!("the payload: {e}")))
    }

    /// The payload as UTF-8 text; bad input when it is not.
    pub fn text(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload).map_err(|e| HandlerError::BadInput(format!("the payload is not UTF-8: {e}")))
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value.as_slice())
    }
}

/// Documents in the host's database, limited to the collections the
/// manifest grants. Every call is journaled per record: a record handled
/// again gets the same answers, and its writes are not done twice.
pub mod documents {
    pub use super::wit::documents::{DocumentError, UpdateResult, UpdateStatement};
    use super::{HandlerError, host};
    use serde::{Serialize, de::DeserializeOwned};
    use serde_json::Value;

    /// Inserts one document (Extended JSON text) and returns its `_id`.
    pub fn insert_one(collection: &str, document: &str) -> Result<String, DocumentError> {
        host::insert_one(collection, document)
    }

    /// Up to `limit` (at most 1000) documents matching `filter`, as JSON text.
    pub fn find(collection: &str, filter: &str, limit: u32) -> Result<Vec<String>, DocumentError> {
        host::find(collection, filter, limit)
    }

    /// Applies `update` to every document matching `filter`.
    pub fn update_many(
        collection: &str,
        filter: &str,
        update: &str,
        array_filters: &[String],
    ) -> Result<UpdateResult, DocumentError> {
        host::update_many(collection, filter, update, array_filters)
    }

    /// Applies several updates to `collection` in one request to the
    /// database, in order; the result sums theirs. When one fails, the
    /// error names it, the ones before it are applied and the ones after
    /// it are not.
    pub fn update_each(collection: &str, updates: &[UpdateStatement]) -> Result<UpdateResult, DocumentError> {
        host::update_each(collection, updates)
    }

    /// One update of [`update_all`]: `update` applied to every document
    /// `filter` matches, `array_filters` naming its `$[identifier]` paths.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Update {
        pub filter: Value,
        pub update: Value,
        pub array_filters: Vec<Value>,
    }

    /// [`update_each`] with JSON values: all of `updates` in one request.
    pub fn update_all(collection: &str, updates: &[Update]) -> Result<UpdateResult, DocumentError> {
        let statements: Vec<UpdateStatement> = updates
            .iter()
            .map(|u| UpdateStatement {
                filter: u.filter.to_string(),
                update: u.update.to_string(),
                array_filters: u.array_filters.iter().map(Value::to_string).collect(),
            })
            .collect();
        update_each(collection, &statements)
    }

    /// Inserts `document`, serialized to JSON; returns its `_id`.
    pub fn insert(collection: &str, document: &impl Serialize) -> Result<String, DocumentError> {
        insert_one(collection, &to_json(document)?)
    }

    /// Up to `limit` documents matching `filter`, deserialized into `T`.
    pub fn find_as<T: DeserializeOwned>(collection: &str, filter: &Value, limit: u32) -> Result<Vec<T>, DocumentError> {
        find(collection, &filter.to_string(), limit)?
            .iter()
            .map(|text| serde_json::from_str(text).map_err(|e| DocumentError::Invalid(format!("a found document: {e}"))))
            .collect()
    }

    /// Applies `update` to every document matching `filter`; `array_filters`
    /// name the `$[identifier]` paths of the update.
    pub fn update(collection: &str, filter: &Value, update: &Value, array_filters: &[Value]) -> Result<UpdateResult, DocumentError> {
        let array_filters: Vec<String> = array_filters.iter().map(Value::to_string).collect();
        update_many(collection, &filter.to_string(), &update.to_string(), &array_filters)
    }

    /// An Extended JSON date, `ms` milliseconds after the Unix epoch.
    pub fn date(ms: i64) -> Value {
        serde_json::json!({ "$date": { "$numberLong": ms.to_string() } })
    }

    fn to_json(document: &impl Serialize) -> Result<String, DocumentError> {
        serde_json::to_string(document).map_err(|e| DocumentError::Invalid(format!("the document: {e}")))
    }

    impl From<DocumentError> for HandlerError {
        /// `unavailable` is worth a retry; anything else will not change.
        fn from(e: DocumentError) -> Self {
            match e {
                DocumentError::Unavailable(m) => HandlerError::RetryLater(m),
                DocumentError::NotPermitted(m) | DocumentError::Conflict(m) | DocumentError::Invalid(m) => {
                    HandlerError::GiveUp(m)
                }
            }
        }
    }
}

/// E-mail through the host's SMTP relay, when the manifest grants it. A
/// record handled again does not mail again.
pub mod mail {
    pub use super::wit::mail::{MailError, Message};
    use super::{HandlerError, host};

    pub fn send(message: &Message) -> Result<(), MailError> {
        host::send(message)
    }

    impl From<MailError> for HandlerError {
        /// `unavailable` is worth a retry; anything else will not change.
        fn from(e: MailError) -> Self {
            match e {
                MailError::Unavailable(m) => HandlerError::RetryLater(m),
                MailError::NotPermitted(m) | MailError::Invalid(m) => HandlerError::GiveUp(m),
            }
        }
    }
}

/// The configuration values of the function's manifest.
pub mod config {
    /// The value of `name`, or none when the manifest defines no such key.
    pub fn get(name: &str) -> Option<String> {
        super::host::config_get(name)
    }
}

/// Log lines, written by the host with the function's name.
pub mod logging {
    pub use super::wit::logging::Level;

    pub fn log(level: Level, message: &str) {
        super::host::log(level, message)
    }
}

/// The host's clock. Journaled: a record handled again reads the time its
/// first handling read (WASI's clocks are not journaled).
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        super::host::now_ms()
    }
}
