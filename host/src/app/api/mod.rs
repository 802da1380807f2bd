//! The application's HTTP API (axum): CRUD on the resources and the events
//! their changes produce. Every failure is a [`Problem`]; bad input is never
//! a 500.

mod comicbooks;
mod mount;
mod persons;
mod resource;
mod store_alerts;
mod stores;

use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use mongodb::Database;

use crate::{
    app::{domain::FieldError, storage::StorageError},
    platform::{
        http::{Problem, openapi::Api},
        outbox::Outbox,
    },
};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub database: Database,
    /// Where updates leave their events, for the relay to publish.
    pub outbox: Outbox,
}

/// Every route of the application, with the document that describes them.
/// `max_body_bytes` bounds every request body.
pub fn router(state: AppState, max_body_bytes: usize) -> (Router, utoipa::openapi::OpenApi) {
    let mut api = Api::<AppState>::default();
    api = mount::writable::<persons::Persons>(api, "persons");
    api = mount::writable::<comicbooks::Comicbooks>(api, "comicbooks");
    api = mount::writable::<stores::Stores>(api, "stores");
    api = mount::read_only::<store_alerts::StoreAlerts>(api, "store-alerts");
    // Roles are the keys of `persons`, which schemas cannot reference.
    api.schema::<crate::app::domain::comicbook::Role>();
    let (router, doc) = api.finish();
    (router.layer(DefaultBodyLimit::max(max_body_bytes)).with_state(state), doc)
}

/// A listing: the items as a JSON array, their total in `X-Total-Count`.
pub(crate) fn listing<T: serde::Serialize>(items: Vec<T>, total: u64) -> Response {
    let mut response = Json(items).into_response();
    response.headers_mut().insert("x-total-count", HeaderValue::from(total));
    response
}

impl From<FieldError> for Problem {
    fn from(e: FieldError) -> Self {
        Problem::invalid_field(e.field.clone(), e.to_string())
    }
}

impl From<StorageError> for Problem {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Duplicate => Problem::conflict(e.to_string()),
            StorageError::EventsPending => Problem::unavailable(e.to_string()),
            StorageError::Unavailable(_) => {
                tracing::error!("storage: {e}");
                Problem::unavailable("the database is unavailable; try again later")
            }
        }
    }
}
