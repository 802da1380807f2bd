//! Optional span export to an OpenTelemetry collector (OTLP over HTTP),
//! turned on by `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! The spans are the ones [`super`] already keeps ids for: an HTTP
//! request's (`SERVER`) and a record's (`CONSUMER`), each with the trace
//! and span ids its `traceparent` carries, so that a collector links the
//! request to the record its event became. They go through the SDK's batch
//! processor on a thread of its own: finishing a span only queues it (a
//! full queue drops spans, it never waits), and without an endpoint it
//! costs one atomic load.
//!
//! The standard variables apply (`…_PROTOCOL` `http/protobuf` or
//! `http/json`, `…_HEADERS`, `…_TIMEOUT`, `OTEL_BSP_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`); gRPC and compression
//! are not built in and are refused at start.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use opentelemetry::{
    InstrumentationScope, Key, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, SpanData, SpanProcessor},
};

use super::TraceContext;
use crate::platform::redact;

/// The processor spans go to, once [`Exporter::from_env`] made one.
static PROCESSOR: OnceLock<BatchSpanProcessor> = OnceLock::new();

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";

/// The running export; [`Exporter::shutdown`] sends what is queued.
pub struct Exporter {
    endpoint: String,
    /// One export's time limit.
    timeout: Duration,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").field("endpoint", &self.endpoint).finish()
    }
}

fn set(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl Exporter {
    /// Starts exporting when an endpoint is set (`Ok(None)` otherwise).
    /// Spans are sent by `handle`'s runtime. A setting the exporter cannot
    /// use stops the start, naming its variable.
    pub fn from_env(handle: tokio::runtime::Handle) -> anyhow::Result<Option<Exporter>> {
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let (variable, endpoint) = match (set(TRACES_ENDPOINT), set(ENDPOINT)) {
            (Some(traces), _) => (TRACES_ENDPOINT, traces),
            (None, Some(base)) => (ENDPOINT, base),
            (None, None) => return Ok(None),
        };
        let url = reqwest::Url::parse(&endpoint).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        let Some(mut url) = url else {
            bail!("{variable}: '{}' is not an http:// or https:// URL", redact::url(&endpoint));
        };
        // The base endpoint gets the signal's path; the traces one is used
        // as it is. Given to the exporter whole, so that it never reads the
        // variables' raw values itself.
        if variable == ENDPOINT {
            let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        for variable in [TRACES_COMPRESSION, COMPRESSION] {
            if let Some(compression) = set(variable).filter(|c| c != "none") {
                bail!("{variable}: '{compression}' is not built in; spans are sent uncompressed (none)");
            }
        }
        for variable in [TRACES_PROTOCOL, PROTOCOL] {
            match set(variable).as_deref() {
                None => continue,
                Some("http/protobuf" | "http/json") => break,
                Some("grpc") => bail!("{variable}: grpc is not built in; use http/protobuf (a collector's port 4318)"),
                Some(other) => bail!("{variable}: '{other}' is not an OTLP protocol (http/protobuf or http/json)"),
            }
        }
        let json = [TRACES_PROTOCOL, PROTOCOL].iter().find_map(|v| set(v)).is_some_and(|p| p == "http/json");
        // The exporter leaves the request's time limit to its client.
        let timeout = match [TRACES_TIMEOUT, TIMEOUT].iter().find_map(|v| set(v).map(|t| (v, t))) {
            None => Duration::from_secs(10),
            Some((variable, text)) => match text.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => bail!("{variable}: '{text}' is not a number of milliseconds above 0"),
            },
        };
        let inner = reqwest::Client::builder().timeout(timeout).build().context("cannot make the OTLP client")?;
        let client = Client { inner, handle };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.as_str())
            .with_timeout(timeout)
            .with_protocol(if json { Protocol::HttpJson } else { Protocol::HttpBinary })
            .with_http_client(client)
            .build()
            .context("cannot set up the OTLP span exporter (OTEL_EXPORTER_OTLP_*)")?;
        // `service.name` from OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES, else ours.
        let mut resource = Resource::builder().build();
        if resource.get(&Key::from_static_str("service.name")).is_none_or(|n| n.as_str().starts_with("unknown_service")) {
            resource = Resource::builder().with_service_name("runnel").build();
        }
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(&resource);
        if PROCESSOR.set(processor).is_err() {
            bail!("spans are already exported by this process");
        }
        // The origin only: a path could hold a token.
        let endpoint = url.origin().ascii_serialization();
        tracing::info!(endpoint, "exporting spans over OTLP");
        Ok(Some(Exporter { endpoint, timeout }))
    }

    /// Sends the spans still queued and stops the export thread, waiting at
    /// most one export's time limit (and a second): spans still queued
    /// behind an export to a collector that does not answer are dropped.
    /// Blocks: call it off the runtime's workers.
    pub fn shutdown(self) {
        if let Some(processor) = PROCESSOR.get()
            && let Err(e) = processor.shutdown_with_timeout(self.timeout + Duration::from_secs(1))
        {
            tracing::warn!(endpoint = self.endpoint, "spans not all exported at shutdown: {e}");
        }
    }
}

/// Whether finished spans are exported.
pub fn enabled() -> bool {
    PROCESSOR.get().is_some()
}

/// One finished span of ours.
pub struct Finished {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub context: TraceContext,
    /// The remote span it continues (the `traceparent` it was given).
    pub parent: Option<TraceContext>,
    pub start: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Finished {
    /// Queues the span for export, when spans are exported and its trace is
    /// sampled.
    pub fn export(self) {
        let Some(processor) = PROCESSOR.get() else { return };
        if self.context.flags & 1 == 0 {
            return;
        }
        let span_context = SpanContext::new(
            TraceId::from_bytes(self.context.trace_id),
            SpanId::from_bytes(self.context.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let scope = SCOPE.get_or_init(|| InstrumentationScope::builder("runnel").with_version(env!("CARGO_PKG_VERSION")).build());
        processor.on_end(SpanData {
            span_context,
            parent_span_id: self.parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.span_id)),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: self.error.map_or(Status::Unset, Status::error),
            instrumentation_scope: scope.clone(),
        });
    }
}

static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();

/// The exporter's HTTP client: the host's reqwest (its TLS roots), run on
/// the host's runtime, so that the SDK's export thread can wait for it
/// without a runtime of its own.
struct Client {
    inner: reqwest::Client,
    handle: tokio::runtime::Handle,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Client")
    }
}

/// The largest collector answer read (it is a status, usually empty).
const MAX_ANSWER: usize = 1 << 20;

impl HttpClient for Client {
    fn send_bytes<'a, 'b>(&'a self, request: Request<Bytes>) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.inner.clone();
        let sent = self.handle.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = std::mem::take(answer.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err("the collector's answer is over 1 MiB".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(response.body(Bytes::from(body))?)
        });
        Box::pin(async move { sent.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}
