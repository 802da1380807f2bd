//! The `store_alerts` collection, written by the `store-alert-to-email`
//! function through its document capability and read by the API.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::domain::store_alert::StoreAlert;

pub const COLLECTION: &str = "store_alerts";

/// A StoreAlert as MongoDB keeps it. Functions write these documents, so every
/// field but `_id` tolerates being absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreAlertDoc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub store_name: String,
    #[serde(default)]
    pub store_status: String,
    #[serde(default)]
    pub timestamp: Option<DateTime>,
}

impl From<StoreAlertDoc> for StoreAlert {
    fn from(d: StoreAlertDoc) -> Self {
        StoreAlert {
            id: d.id,
            store_name: d.store_name,
            store_status: d.store_status,
            timestamp: d.timestamp.map(DateTime::to_chrono),
        }
    }
}
