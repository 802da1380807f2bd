//! Store: a shop whose status changes are announced on `store-alerts-topic`.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, required_text};

/// Topic that receives a [`StoreAlertEvent`] for every store update.
pub const STORE_ALERTS_TOPIC: &str = "store-alerts-topic";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StoreStatus {
    Open,
    Closed,
}

/// A store as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Store {
    pub id: String,
    pub name: String,
    pub address: String,
    pub status: StoreStatus,
    pub create_timestamp: DateTime<Utc>,
    pub update_timestamp: DateTime<Utc>,
}

/// A store as a client sends it (POST and PUT bodies). Everything is optional
/// at the JSON level so that validation can name each missing field.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreInput {
    /// Absent, or equal to the id in the path.
    pub id: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(required = true)]
    pub address: Option<String>,
    /// `OPEN` when absent.
    pub status: Option<StoreStatus>,
    pub create_timestamp: Option<DateTime<Utc>>,
    pub update_timestamp: Option<DateTime<Utc>>,
}

/// What `PUT /api/stores/{id}` announces (key: the store id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreAlertEvent {
    pub store_name: String,
    pub store_status: StoreStatus,
}

impl StoreInput {
    /// A new store with id `id`; absent timestamps become `now`, an absent
    /// status `OPEN`.
    pub fn into_new(self, id: String, now: DateTime<Utc>) -> Result<Store, FieldError> {
        self.into_store(id, None, now)
    }

    /// The full replacement of `existing`: an absent `createTimestamp` keeps the
    /// existing one, an absent `updateTimestamp` becomes `now`.
    pub fn into_replacement(self, existing: &Store, now: DateTime<Utc>) -> Result<Store, FieldError> {
        self.into_store(existing.id.clone(), Some(existing.create_timestamp), now)
    }

    fn into_store(
        self,
        id: String,
        created: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Store, FieldError> {
        super::check_body_id(self.id.as_deref(), &id)?;
        // Stored as BSON dates, which keep milliseconds.
        let now = now.trunc_subsecs(3);
        Ok(Store {
            id,
            name: required_text("name", self.name)?,
            address: required_text("address", self.address)?,
            status: self.status.unwrap_or(StoreStatus::Open),
            create_timestamp: self.create_timestamp.or(created).unwrap_or(now).trunc_subsecs(3),
            update_timestamp: self.update_timestamp.unwrap_or(now).trunc_subsecs(3),
        })
    }
}

impl Store {
    pub fn alert_event(&self) -> StoreAlertEvent {
        StoreAlertEvent { store_name: self.name.clone(), store_status: self.status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: Option<&str>, address: Option<&str>) -> StoreInput {
        StoreInput {
            name: name.map(String::from),
            address: address.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn required_fields_are_named() {
        let now = Utc::now();
        let e = input(None, Some("a")).into_new("1".into(), now).unwrap_err();
        assert_eq!(e.field, "name");
        let e = input(Some("n"), Some("  ")).into_new("1".into(), now).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("address", "must not be blank"));
    }

    #[test]
    fn server_sets_absent_fields() {
        let now = Utc::now();
        let s = input(Some(" Shop "), Some("Main St")).into_new("1".into(), now).unwrap();
        assert_eq!(s.name, "Shop");
        assert_eq!(s.status, StoreStatus::Open);
        assert_eq!(s.create_timestamp, now.trunc_subsecs(3));
        let later = now + chrono::Duration::seconds(5);
        let mut put = input(Some("Shop"), Some("Main St"));
        put.status = Some(StoreStatus::Closed);
        let r = put.into_replacement(&s, later).unwrap();
        assert_eq!(r.create_timestamp, s.create_timestamp);
        assert_eq!(r.update_timestamp, later.trunc_subsecs(3));
        assert_eq!(r.alert_event().store_status, StoreStatus::Closed);
    }

    #[test]
    fn a_body_id_must_match_the_path() {
        let mut i = input(Some("n"), Some("a"));
        i.id = Some("other".into());
        assert_eq!(i.into_new("1".into(), Utc::now()).unwrap_err().field, "id");
    }

    #[test]
    fn event_json_uses_the_original_field_names() {
        let e = StoreAlertEvent { store_name: "S".into(), store_status: StoreStatus::Closed };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"storeName":"S","storeStatus":"CLOSED"}"#);
    }
}
