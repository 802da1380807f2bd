//! `GET /metrics`: the host's metrics in the Prometheus (OpenMetrics) text
//! format.
//!
//! | metric | labels | |
//! |---|---|---|
//! | `runnel_records_handled_total` | function, version | records the function handled |
//! | `runnel_records_failed_total` | function, version, kind | tries that did not handle the record: `trap` (a trap or a timeout), `bad-input`, `retry-later`, `give-up`, `not-started` |
//! | `runnel_records_dead_lettered_total` | function, version | records copied to the dead-letter topic |
//! | `runnel_records_retried_total` | function, version | tries run again |
//! | `runnel_records_filtered_total` | function, version | records the manifest's filter skipped |
//! | `runnel_handling_seconds` | function, version | histogram of one try's time in the function |
//! | `runnel_consumer_lag` | function, topic, partition | records on the broker past the first one not handled yet |
//! | `runnel_journal_backlog` | | handled records whose journal documents wait to be marked |
//! | `runnel_outbox_backlog` | collection | documents whose events wait to be published (the relay's last scan) |
//! | `runnel_http_requests_total` | method, route, status | requests by route template (`/api/stores/{id}`) |
//! | `runnel_http_request_duration_seconds` | method, route | histogram of the time to the response's head |
//! | `runnel_wasm_instances` | | WebAssembly instances alive (running, or kept warm for reuse) |
//! | `runnel_wasm_memory_bytes` | | their linear memory |
//!
//! Counters and histograms are updated where things happen; the gauges of
//! other parts (journal, outbox, runtime, consumers) are read from them at
//! each scrape, through [`Sources`].

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a function's version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub function: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    function: String,
    version: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    function: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectionLabels {
    collection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    method: String,
    route: String,
    status: String,
}

/// Seconds, from 100 µs to about 30 s.
fn seconds_histogram() -> Histogram {
    Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter())
}

/// What the gauges are read from at each scrape.
pub trait Sources: Send + Sync {
    /// (function, topic, partition, lag) of every partition consumed here.
    fn lag(&self) -> Vec<(String, String, i32, i64)>;
    /// Handled records whose journal documents wait to be marked.
    fn journal_backlog(&self) -> i64;
    /// Documents with pending events, by collection.
    fn outbox_backlog(&self) -> Vec<(String, i64)>;
    /// WebAssembly instances alive, and their linear memory in bytes.
    fn wasm(&self) -> (i64, i64);
}

/// The host's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

type SecondsFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    handled: Family<VersionLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    dead_lettered: Family<VersionLabels, Counter>,
    retried: Family<VersionLabels, Counter>,
    filtered: Family<VersionLabels, Counter>,
    handling: SecondsFamily<VersionLabels>,
    lag: Family<LagLabels, Gauge>,
    journal_backlog: Gauge,
    outbox_backlog: Family<CollectionLabels, Gauge>,
    requests: Family<StatusLabels, Counter>,
    request_seconds: SecondsFamily<RouteLabels>,
    wasm_instances: Gauge,
    wasm_memory: Gauge,
    sources: Mutex<Option<Arc<dyn Sources>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("runnel");
        let handled = Family::default();
        let failed = Family::default();
        let dead_lettered = Family::default();
        let retried = Family::default();
        let filtered = Family::default();
        let handling: SecondsFamily<VersionLabels> = Family::new_with_constructor(seconds_histogram);
        let lag = Family::default();
        let journal_backlog = Gauge::default();
        let outbox_backlog = Family::default();
        let requests = Family::default();
        let request_seconds: SecondsFamily<RouteLabels> = Family::new_with_constructor(seconds_histogram);
        let wasm_instances = Gauge::default();
        let wasm_memory = Gauge::default();
        registry.register("records_handled", "Records the function handled", handled.clone());
        registry.register(
            "records_failed",
            "Tries that did not handle the record, by kind (trap, bad-input, retry-later, give-up, not-started)",
            failed.clone(),
        );
        registry.register("records_dead_lettered", "Records copied to the dead-letter topic", dead_lettered.clone());
        registry.register("records_retried", "Tries run again", retried.clone());
        registry.register("records_filtered", "Records the manifest's filter skipped", filtered.clone());
        registry.register("handling_seconds", "Time of one try in the function", handling.clone());
        registry.register("consumer_lag", "Records on the broker past the first one not handled yet", lag.clone());
        registry.register("journal_backlog", "Handled records whose journal documents wait to be marked", journal_backlog.clone());
        registry.register("outbox_backlog", "Documents whose events wait to be published", outbox_backlog.clone());
        registry.register("http_requests", "HTTP requests by route template and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to the response's head, by route template", request_seconds.clone());
        registry.register("wasm_instances", "WebAssembly instances alive (running, or kept warm)", wasm_instances.clone());
        registry.register("wasm_memory_bytes", "Linear memory of the instances alive", wasm_memory.clone());
        Metrics {
            inner: Arc::new(Inner {
                registry,
                handled,
                failed,
                dead_lettered,
                retried,
                filtered,
                handling,
                lag,
                journal_backlog,
                outbox_backlog,
                requests,
                request_seconds,
                wasm_instances,
                wasm_memory,
                sources: Mutex::new(None),
            }),
        }
    }

    /// Where the gauges come from (set once the parts exist).
    pub fn set_sources(&self, sources: Arc<dyn Sources>) {
        *self.inner.sources.lock().unwrap_or_else(|e| e.into_inner()) = Some(sources);
    }

    /// The counters of one function version, to keep while it runs.
    pub fn version(&self, function: &str, version: &str) -> VersionMetrics {
        let labels = VersionLabels { function: function.to_string(), version: version.to_string() };
        let i = &self.inner;
        VersionMetrics {
            handled: i.handled.get_or_create(&labels).clone(),
            dead_lettered: i.dead_lettered.get_or_create(&labels).clone(),
            retried: i.retried.get_or_create(&labels).clone(),
            filtered: i.filtered.get_or_create(&labels).clone(),
            handling: i.handling.get_or_create(&labels).clone(),
            failed: i.failed.clone(),
            labels,
        }
    }

    /// The text to serve, with the gauges read now.
    pub fn render(&self) -> String {
        let i = &self.inner;
        let sources = i.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sources) = sources {
            i.lag.clear();
            for (function, topic, partition, lag) in sources.lag() {
                i.lag.get_or_create(&LagLabels { function, topic, partition: partition.to_string() }).set(lag);
            }
            i.journal_backlog.set(sources.journal_backlog());
            i.outbox_backlog.clear();
            for (collection, pending) in sources.outbox_backlog() {
                i.outbox_backlog.get_or_create(&CollectionLabels { collection }).set(pending);
            }
            let (instances, memory) = sources.wasm();
            i.wasm_instances.set(instances);
            i.wasm_memory.set(memory);
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &i.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        text
    }

    fn observe_request(&self, method: &str, route: &str, status: StatusCode, started: Instant) {
        let i = &self.inner;
        let (method, route) = (method.to_string(), route.to_string());
        i.requests
            .get_or_create(&StatusLabels { method: method.clone(), route: route.clone(), status: status.as_u16().to_string() })
            .inc();
        i.request_seconds.get_or_create(&RouteLabels { method, route }).observe(started.elapsed().as_secs_f64());
    }
}

/// One version's counters, held by the trigger running it.
#[derive(Clone)]
pub struct VersionMetrics {
    labels: VersionLabels,
    pub handled: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
    pub filtered: Counter,
    pub handling: Histogram,
    failed: Family<FailedLabels, Counter>,
}

impl VersionMetrics {
    pub fn version(&self) -> &str {
        &self.labels.version
    }

    /// A try that did not handle its record, of `kind`.
    pub fn failed(&self, kind: &str) {
        let labels = FailedLabels {
            function: self.labels.function.clone(),
            version: self.labels.version.clone(),
            kind: kind.to_string(),
        };
        self.failed.get_or_create(&labels).inc();
    }
}

/// `GET /metrics`.
pub async fn serve(State(metrics): State<Metrics>) -> Response {
    let content_type = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
}

/// Counts every request by its route template (a route layer: it runs
/// once the route is known).
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics.observe_request(&method, &route, response.status(), started);
    response
}

/// Counts a request no route matched (the router's fallback).
pub fn untracked(metrics: &Metrics, method: &str, status: StatusCode, started: Instant) {
    metrics.observe_request(method, "unmatched", status, started);
}
