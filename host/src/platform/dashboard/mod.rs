//! `/ui`: a live dashboard served from the binary. The page, its script and
//! its style are static and open; what they show comes from
//! `GET /ui/events`, server-sent events of one snapshot a second, behind
//! the admin API's access rules (it shows what the admin API shows, and its
//! replay button uses the admin API).
//!
//! A snapshot holds every function running on this host (version, state,
//! counters, lag, recent errors and dead letters) and the tables the
//! application adds as [`Panel`]s (e.g. recent store alerts). The script
//! turns counters into rates and a chart.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::header,
    middleware,
    response::{
        Html, IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{Stream, future::BoxFuture};
use serde::Serialize;
use tokio::sync::watch;

use super::{
    auth::{self, Auth},
    deployments::{CounterSnapshot, Incident, Registry},
};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// How long a panel's rows may take before the snapshot goes without them.
const PANEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Rows of a panel, newest first, read at each snapshot.
pub type Rows = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Vec<Vec<String>>>> + Send + Sync>;

/// A table the application adds to the dashboard.
#[derive(Clone)]
pub struct Panel {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Rows,
}

/// What the dashboard reads. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    pub registry: Registry,
    pub panels: Arc<Vec<Panel>>,
    /// Time between snapshots.
    pub interval: Duration,
    /// Ends the event streams when the host stops (so that it can).
    pub stop: watch::Receiver<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    at: chrono::DateTime<chrono::Utc>,
    functions: Vec<FunctionRow>,
    panels: Vec<PanelRows>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionRow {
    name: String,
    version: String,
    state: &'static str,
    reason: Option<String>,
    counters: CounterSnapshot,
    /// Records on the broker past the first not handled, all partitions.
    lag: i64,
    recent: Vec<Incident>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PanelRows {
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Why the rows are missing, if they are.
    error: Option<String>,
}

impl Dashboard {
    async fn snapshot(&self) -> Snapshot {
        let functions = self
            .registry
            .statuses()
            .into_iter()
            .map(|s| FunctionRow {
                name: s.name,
                version: s.version,
                state: s.state.name(),
                reason: s.state.reason().map(str::to_string),
                counters: s.counters,
                lag: s.lag.iter().map(|p| p.lag).sum(),
                recent: s.recent,
            })
            .collect();
        let panels = futures::future::join_all(self.panels.iter().map(|panel| async move {
            let (rows, error) = match tokio::time::timeout(PANEL_TIMEOUT, (panel.rows)()).await {
                Ok(Ok(rows)) => (rows, None),
                Ok(Err(e)) => (Vec::new(), Some(format!("{e:#}"))),
                Err(_) => (Vec::new(), Some(format!("no answer within {PANEL_TIMEOUT:?}"))),
            };
            PanelRows { title: panel.title.clone(), columns: panel.columns.clone(), rows, error }
        }))
        .await;
        Snapshot { at: chrono::Utc::now(), functions, panels }
    }
}

/// The dashboard's routes: the page and its files (open), and the events
/// (behind `auth`'s admin rule).
pub fn router(dashboard: Dashboard, access: Auth) -> Router {
    let events = Router::new()
        .route("/ui/events", get(events))
        .with_state(dashboard)
        .route_layer(middleware::from_fn_with_state(access, auth::admin));
    Router::new()
        .route("/ui", get(|| async { Html(INDEX) }))
        .route("/ui/", get(|| async { Html(INDEX) }))
        .route("/ui/dashboard.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response() }))
        .route("/ui/dashboard.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response() }))
        .merge(events)
}

/// One snapshot now, then one every interval, until the host stops.
async fn events(State(dashboard): State<Dashboard>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((dashboard, true), |(mut dashboard, first)| async move {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(dashboard.interval) => {}
                _ = dashboard.stop.wait_for(|stop| *stop) => return None,
            }
        }
        if *dashboard.stop.borrow() {
            return None;
        }
        let snapshot = dashboard.snapshot().await;
        let event = Event::default().event("snapshot").json_data(&snapshot).unwrap_or_else(|e| Event::default().comment(format!("no snapshot: {e}")));
        Some((Ok(event), (dashboard, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
