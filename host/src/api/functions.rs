//! `/api/functions`: what is deployed and how each function is doing.

use axum::{Json, extract::State, routing::get};
use utoipa::openapi::{HttpMethod, schema::ArrayBuilder};

use super::{
    AppState,
    openapi::{Api, Op},
};
use crate::functions::registry::FunctionStatus;

pub fn mount(mut api: Api) -> Api {
    api.schema::<FunctionStatus>();
    let op = Op::new(HttpMethod::Get, "list_functions", "Deployed functions and their state", "functions").json(
        200,
        "Every deployed function",
        ArrayBuilder::new().items(utoipa::openapi::Ref::from_schema_name("FunctionStatus")).build(),
    );
    api.route("/api/functions", get(list), vec![op])
}

async fn list(State(state): State<AppState>) -> Json<Vec<FunctionStatus>> {
    Json(state.registry.list())
}
