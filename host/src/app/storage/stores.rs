//! The `stores` collection.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::app::domain::store::{Store, StoreStatus};

pub const COLLECTION: &str = "stores";

/// A store as MongoDB keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub status: StoreStatus,
    pub create_timestamp: DateTime,
    pub update_timestamp: DateTime,
}

impl From<&Store> for StoreDoc {
    fn from(s: &Store) -> Self {
        StoreDoc {
            id: s.id.clone(),
            name: s.name.clone(),
            address: s.address.clone(),
            status: s.status,
            create_timestamp: DateTime::from_chrono(s.create_timestamp),
            update_timestamp: DateTime::from_chrono(s.update_timestamp),
        }
    }
}

impl From<StoreDoc> for Store {
    fn from(d: StoreDoc) -> Self {
        Store {
            id: d.id,
            name: d.name,
            address: d.address,
            status: d.status,
            create_timestamp: d.create_timestamp.to_chrono(),
            update_timestamp: d.update_timestamp.to_chrono(),
        }
    }
}
