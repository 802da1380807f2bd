//! `/health/live` and `/health/ready`, for supervisors and load balancers.
//!
//! - live: the process serves HTTP (200 as long as it answers at all);
//! - ready: the database answers a ping, a broker answers a metadata
//!   request, and this host has loaded the active version of every deployed
//!   function. 200 when all three are up, 503 otherwise; the body has each
//!   check's status, latency and error. Each check is bounded by
//!   [`CHECK_TIMEOUT`], so a hung database makes the host unready, not the
//!   probe hang.

use std::time::{Duration, Instant};

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use mongodb::{Database, bson::doc};
use serde::Serialize;
use utoipa::openapi::{HttpMethod, OpenApi};

use super::{
    deployments::Deployer,
    http::openapi::{Api, Op, schema_ref},
    kafka::Topics,
};

/// The longest one readiness check may take; past it, it is down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks.
#[derive(Clone)]
pub struct Health {
    pub database: Database,
    pub topics: Topics,
    pub deployer: Deployer,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Up {
    Up,
    Down,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub status: Up,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The functions check: how many are deployed, and which this host has not
/// loaded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionsCheck {
    #[serde(flatten)]
    pub check: Check,
    pub deployed: usize,
    pub not_loaded: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    pub database: Check,
    pub broker: Check,
    pub functions: FunctionsCheck,
}

/// `GET /health/ready`'s body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub status: Up,
    pub checks: Checks,
}

/// `GET /health/live`'s body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    pub status: Up,
}

/// Runs `probe` within [`CHECK_TIMEOUT`]; its check, and what it found.
async fn timed<T, E: std::fmt::Display>(probe: impl Future<Output = Result<T, E>>) -> (Check, Option<T>) {
    let started = Instant::now();
    let result = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let (error, found) = match result {
        Ok(Ok(found)) => (None, Some(found)),
        Ok(Err(e)) => (Some(e.to_string()), None),
        Err(_) => (Some(format!("no answer within {CHECK_TIMEOUT:?}")), None),
    };
    let status = if error.is_none() { Up::Up } else { Up::Down };
    (Check { status, latency_ms, error }, found)
}

impl Health {
    pub async fn readiness(&self) -> Readiness {
        let database = timed(self.database.run_command(doc! { "ping": 1 }).into_future());
        let broker = timed(self.topics.ping(CHECK_TIMEOUT));
        let functions = timed(self.deployer.not_loaded());
        let ((database, _), (broker, _), (mut check, found)) = tokio::join!(database, broker, functions);
        let (deployed, not_loaded) = found.unwrap_or_default();
        if !not_loaded.is_empty() {
            check.status = Up::Down;
            check.error = Some(format!("not loaded on this host yet: {}", not_loaded.join(", ")));
        }
        let functions = FunctionsCheck { check, deployed, not_loaded };
        let up = [database.status, broker.status, functions.check.status].iter().all(|s| *s == Up::Up);
        Readiness { status: if up { Up::Up } else { Up::Down }, checks: Checks { database, broker, functions } }
    }
}

async fn live() -> Json<Liveness> {
    Json(Liveness { status: Up::Up })
}

async fn ready(State(health): State<Health>) -> impl IntoResponse {
    let readiness = health.readiness().await;
    if readiness.status == Up::Down {
        tracing::debug!(?readiness, "not ready");
    }
    let status = if readiness.status == Up::Up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(readiness))
}

/// The routes, with their OpenAPI description. Open to every client: they
/// tell whether the host works, nothing about its data.
pub fn router(health: Health) -> (axum::Router, OpenApi) {
    let mut api = Api::<Health>::default();
    api.schema::<Readiness>();
    api.schema::<Liveness>();
    let tag = "health";
    let (router, doc) = api
        .route(
            "/health/live",
            get(live),
            vec![Op::new(HttpMethod::Get, "live", "Whether the process serves", tag).json(200, "It does", schema_ref("Liveness"))],
        )
        .route(
            "/health/ready",
            get(ready),
            vec![
                Op::new(HttpMethod::Get, "ready", "Whether the host can do its work: database, broker, functions", tag)
                    .json(200, "Every check is up", schema_ref("Readiness"))
                    .json(503, "A check is down (see its error)", schema_ref("Readiness")),
            ],
        )
        .finish();
    (router.with_state(health), doc)
}
