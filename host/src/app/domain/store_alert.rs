//! StoreAlert: the record `store-alert-to-email` keeps of every alert it mailed.
//! Only functions create them; the API reads them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreAlert {
    pub id: String,
    pub store_name: String,
    pub store_status: String,
    pub timestamp: Option<DateTime<Utc>>,
}
