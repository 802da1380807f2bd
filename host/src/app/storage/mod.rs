//! Storage: the collections behind the HTTP API. Resources keep the document shapes of the original
//! services (`_id` plus camelCase fields, dates as BSON dates).

mod repo;
pub mod comicbooks;
pub mod persons;
pub mod store_alerts;
pub mod stores;

pub use crate::platform::storage::is_duplicate_key;
pub use repo::{Page, Repo, StorageError};
