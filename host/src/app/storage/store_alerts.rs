//! The `store_alerts` collection, written by the `store-alert-to-email`
//! function through its document capability and read by the API.

use mongodb::bson::{Bson, DateTime};
use serde::{Deserialize, Serialize};

use crate::app::domain::store_alert::StoreAlert;

pub const COLLECTION: &str = "store_alerts";

/// A StoreAlert as MongoDB keeps it. Functions write these documents, so
/// every field is read as whatever BSON it holds: one odd document must not
/// make the listing fail for everyone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreAlertDoc {
    #[serde(rename = "_id")]
    pub id: Bson,
    #[serde(default)]
    pub store_name: Option<Bson>,
    #[serde(default)]
    pub store_status: Option<Bson>,
    #[serde(default)]
    pub timestamp: Option<Bson>,
}

/// The `n` latest alerts, by their timestamp.
pub async fn latest(database: &mongodb::Database, n: i64) -> mongodb::error::Result<Vec<StoreAlert>> {
    use futures::TryStreamExt;
    let docs: Vec<StoreAlertDoc> = database
        .collection::<StoreAlertDoc>(COLLECTION)
        .find(mongodb::bson::doc! {})
        .sort(mongodb::bson::doc! { "timestamp": -1 })
        .limit(n)
        .await?
        .try_collect()
        .await?;
    Ok(docs.into_iter().map(StoreAlert::from).collect())
}

fn text(value: Option<Bson>) -> String {
    match value {
        Some(Bson::String(s)) => s,
        Some(Bson::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl From<StoreAlertDoc> for StoreAlert {
    fn from(d: StoreAlertDoc) -> Self {
        StoreAlert {
            id: text(Some(d.id)),
            store_name: text(d.store_name),
            store_status: text(d.store_status),
            timestamp: match d.timestamp {
                Some(Bson::DateTime(t)) => Some(DateTime::to_chrono(t)),
                _ => None,
            },
        }
    }
}
