//! `/api/stores`: stores, and the alert event every update produces.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;

use super::{AppState, Problem, listing, request::{Paging, json_body}};
use crate::{
    domain::{
        new_id,
        store::{STORE_ALERTS_TOPIC, Store, StoreInput},
    },
    kafka::Event,
    storage::stores::StoreDoc,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/stores", get(list).post(create))
        .route("/api/stores/{id}", get(read).put(replace).delete(remove))
}

fn not_found(id: &str) -> Problem {
    Problem::not_found(format!("no store with id '{id}'"))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let input: StoreInput = json_body(&headers, body)?;
    let id = match &input.id {
        Some(id) => id.clone(),
        None => new_id(),
    };
    let store = input.into_new(id, Utc::now())?;
    state.stores.insert(&StoreDoc::from(&store)).await?;
    let location = format!("/api/stores/{}", store.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(store)).into_response())
}

async fn read(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Store>, Problem> {
    let doc = state.stores.get(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(doc.into()))
}

async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Problem> {
    let paging = Paging::from_query(query.as_deref())?;
    let page = state.stores.list(paging.skip(), paging.size as i64).await?;
    let items: Vec<Store> = page.items.into_iter().map(Store::from).collect();
    Ok(listing(items, page.total))
}

/// Replaces the store and announces its name and status on
/// `store-alerts-topic` (key: the store id).
async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Store>, Problem> {
    let input: StoreInput = json_body(&headers, body)?;
    let existing: Store = state.stores.get(&id).await?.ok_or_else(|| not_found(&id))?.into();
    let store = input.into_replacement(&existing, Utc::now())?;
    if !state.stores.replace(&id, &StoreDoc::from(&store)).await? {
        return Err(not_found(&id));
    }
    state
        .producer
        .publish(Event::json(STORE_ALERTS_TOPIC, &store.id, &store.alert_event()))
        .await
        .map_err(|e| {
            tracing::error!(store = %store.id, "store saved, alert not published: {e:#}");
            Problem::unavailable(format!(
                "the store was saved but its alert could not be published ({e}); repeat the request"
            ))
        })?;
    Ok(Json(store))
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, Problem> {
    if state.stores.delete(&id).await? { Ok(StatusCode::NO_CONTENT) } else { Err(not_found(&id)) }
}
