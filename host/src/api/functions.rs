//! `/api/functions`: what is deployed and how each function is doing.

use axum::{Json, Router, extract::State, routing::get};

use super::AppState;
use crate::functions::registry::FunctionStatus;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/functions", get(list))
}

async fn list(State(state): State<AppState>) -> Json<Vec<FunctionStatus>> {
    Json(state.registry.list())
}
