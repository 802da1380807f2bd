//! HTTP API (axum on hyper): CRUD on the resources, and the events those
//! changes produce. Every failure is a [`Problem`]; bad input is never a 500.

mod functions;
mod problem;
mod request;
mod store_alerts;
mod stores;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::HeaderValue,
    response::{IntoResponse, Response},
};

pub use problem::Problem;

use crate::{
    functions::Registry,
    kafka::EventProducer,
    storage::{Repo, store_alerts::StoreAlertDoc, stores::StoreDoc},
};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub stores: Repo<StoreDoc>,
    pub store_alerts: Repo<StoreAlertDoc>,
    pub producer: EventProducer,
    pub registry: Registry,
}

/// The whole API. `max_body_bytes` bounds every request body.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(stores::routes())
        .merge(store_alerts::routes())
        .merge(functions::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::method_not_allowed(format!("{} is not allowed on {}", request.method(), request.uri().path()))
}

/// A listing: the items as a JSON array, their total in `X-Total-Count`.
pub(crate) fn listing<T: serde::Serialize>(items: Vec<T>, total: u64) -> Response {
    let mut response = axum::Json(items).into_response();
    response.headers_mut().insert("x-total-count", HeaderValue::from(total));
    response
}
