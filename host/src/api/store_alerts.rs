//! `/api/store-alerts`: read-only; alerts are created by the
//! `store-alert-to-email` function.

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    response::Response,
    routing::get,
};

use super::{AppState, Problem, listing, request::Paging};
use crate::domain::store_alert::StoreAlert;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/store-alerts", get(list))
        .route("/api/store-alerts/{id}", get(read))
}

async fn read(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<StoreAlert>, Problem> {
    let doc = state
        .store_alerts
        .get(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no store alert with id '{id}'")))?;
    Ok(Json(doc.into()))
}

async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Problem> {
    let paging = Paging::from_query(query.as_deref())?;
    let page = state.store_alerts.list(paging.skip(), paging.size as i64).await?;
    let items: Vec<StoreAlert> = page.items.into_iter().map(StoreAlert::from).collect();
    Ok(listing(items, page.total))
}
