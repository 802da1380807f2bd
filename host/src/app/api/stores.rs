//! `/api/stores`: stores; every update announces the store's name and status
//! on `store-alerts-topic` (key: the store id).

use chrono::{DateTime, Utc};

use super::resource::{Resource, Writable};
use crate::{
    app::domain::{
        FieldError,
        store::{STORE_ALERTS_TOPIC, Store, StoreInput},
    },
    platform::kafka::Event,
    app::storage::stores::{COLLECTION, StoreDoc},
};

pub struct Stores;

impl Resource for Stores {
    const NAME: &'static str = "store";
    const PATH: &'static str = "/api/stores";
    const COLLECTION: &'static str = COLLECTION;
    type Item = Store;
    type Doc = StoreDoc;
}

impl Writable for Stores {
    type Input = StoreInput;
    const REFRESHED_ON_PATCH: &'static [&'static str] = &["updateTimestamp"];

    fn create(input: StoreInput, id: String, now: DateTime<Utc>) -> Result<Store, FieldError> {
        input.into_new(id, now)
    }

    fn replace(input: StoreInput, existing: &Store, now: DateTime<Utc>) -> Result<Store, FieldError> {
        input.into_replacement(existing, now)
    }

    fn proposed_id(input: &StoreInput) -> Option<&str> {
        input.id.as_deref()
    }

    fn id(item: &Store) -> &str {
        &item.id
    }

    fn updated_event(item: &Store) -> Option<Event<'_>> {
        Some(Event::json(STORE_ALERTS_TOPIC, &item.id, &item.alert_event()))
    }
}
