//! HTTP API (axum on hyper): CRUD on the resources, the events their changes
//! produce, and the OpenAPI document. Every failure is a [`Problem`]; bad
//! input is never a 500.

mod comicbooks;
mod functions;
mod openapi;
mod persons;
mod problem;
mod request;
mod resource;
mod store_alerts;
mod stores;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::HeaderValue,
    response::{IntoResponse, Response},
    routing::get,
};
use mongodb::Database;
use utoipa::openapi::{HttpMethod, ObjectBuilder};

pub use problem::Problem;

use crate::{functions::Registry, kafka::EventProducer};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub database: Database,
    pub producer: EventProducer,
    pub registry: Registry,
}

/// Every route, with the document that describes them.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut api = openapi::Api::default()
        .writable::<persons::Persons>("persons")
        .writable::<comicbooks::Comicbooks>("comicbooks")
        .writable::<stores::Stores>("stores")
        .read_only::<store_alerts::StoreAlerts>("store-alerts");
    // Roles are the keys of `persons`, which schemas cannot reference.
    api.schema::<crate::domain::comicbook::Role>();
    let api = functions::mount(api);
    // Served by `router`, which has the finished document.
    api.describe(
        "/openapi.json",
        vec![openapi::Op::new(HttpMethod::Get, "openapi", "This document", "meta").json(
            200,
            "The OpenAPI 3 document",
            ObjectBuilder::new().build(),
        )],
    )
    .finish()
}

/// The whole API. `max_body_bytes` bounds every request body.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (router, doc) = api();
    let doc = Arc::new(doc);
    let router = router.route(
        "/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    );
    router
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
    let mut response = Json(items).into_response();
    response.headers_mut().insert("x-total-count", HeaderValue::from(total));
    response
}
