//! The application: the resources of the HTTP API, their storage, and the
//! events their changes produce. It uses the platform (the database, the
//! producer, the HTTP building blocks); the platform knows nothing of it.
//!
//! | module | concern |
//! |---|---|
//! | [`domain`] | resources, events and their validation (no I/O) |
//! | [`storage`] | their collections |
//! | [`api`] | their routes (generic CRUD in `api/resource.rs`) |

pub mod api;
pub mod domain;
pub mod storage;

/// Every topic the application produces to; the host creates them at start.
pub fn topics() -> Vec<String> {
    vec![domain::store::STORE_ALERTS_TOPIC.to_string(), domain::person::PERSON_TOPIC.to_string()]
}

/// The collections whose documents hold events waiting to be published
/// (see the platform's outbox): those of resources with `updated_event`.
pub fn outbox_collections() -> Vec<&'static str> {
    vec![storage::stores::COLLECTION, storage::persons::COLLECTION]
}
