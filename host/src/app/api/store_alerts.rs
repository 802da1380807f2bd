//! `/api/store-alerts`: read and delete; alerts are created only by the
//! `store-alert-to-email` function.

use super::resource::Resource;
use crate::{
    app::domain::store_alert::StoreAlert,
    app::storage::store_alerts::{COLLECTION, StoreAlertDoc},
};

pub struct StoreAlerts;

impl Resource for StoreAlerts {
    const NAME: &'static str = "store-alert";
    const PATH: &'static str = "/api/store-alerts";
    const COLLECTION: &'static str = COLLECTION;
    type Item = StoreAlert;
    type Doc = StoreAlertDoc;
}
