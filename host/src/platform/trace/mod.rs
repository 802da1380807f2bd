//! W3C Trace Context: one trace id from an HTTP request to the event it
//! publishes, the function that handles the event, and that function's
//! effects.
//!
//! - An HTTP request's trace is taken from its `traceparent` header, or
//!   started; the request runs in a `request` span carrying `trace_id`, its
//!   access log line names it, and the answer carries `traceparent`.
//! - An event stored by the request carries `traceparent` in its Kafka
//!   headers ([`crate::platform::outbox`]).
//! - A record is handled in a `record` span with the trace id of its
//!   `traceparent` (or of a new trace), so the host's and the function's log
//!   lines carry it, and mail the function sends has a `Traceparent` header.
//!
//! The context of what runs now is a task-local: [`scope`] sets it,
//! [`current`] reads it. With an OTLP endpoint set, the request and record
//! spans are also exported ([`otlp`]).

pub mod otlp;

use std::{
    fmt::Write,
    time::{Instant, SystemTime},
};

use axum::{
    extract::{MatchedPath, Request},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use opentelemetry::{KeyValue, trace::SpanKind};
use tracing::Instrument;

/// The header's name, in HTTP and in Kafka records.
pub const HEADER: &str = "traceparent";

/// A position in a trace: its id, the current span's id, and its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// `N` random bytes, not all zero (W3C trace context forbids an id of
/// zeros). From the thread's fast generator, not the kernel's: an id must
/// be unique, not secret, and a record needs two.
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id == [0; N] {
        fastrand::fill(&mut id);
    }
    id
}

fn span_id() -> [u8; 8] {
    random_id()
}

impl TraceContext {
    /// A new trace (sampled).
    pub fn root() -> Self {
        TraceContext { trace_id: random_id(), span_id: span_id(), flags: 1 }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext { span_id: span_id(), ..*self }
    }

    /// Reads a `traceparent` value (version 00, or a later version's first
    /// four fields); anything malformed is `None`, and a new trace starts.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = unhex::<1>(fields.next()?)?[0];
        let trace_id = unhex::<16>(fields.next()?)?;
        let span_id = unhex::<8>(fields.next()?)?;
        let flags = unhex::<1>(fields.next()?)?[0];
        let extra = fields.next().is_some();
        if version == 0xff || (version == 0 && extra) || trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext { trace_id, span_id, flags })
    }

    /// The first `traceparent` among a record's headers.
    pub fn from_headers<'a>(mut headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Option<Self> {
        headers.find(|(k, _)| k.eq_ignore_ascii_case(HEADER)).and_then(|(_, v)| Self::parse(std::str::from_utf8(v).ok()?))
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id(), self.span_id(), self.flags)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `future` with `context` as the current trace.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The trace of what runs now, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// HTTP middleware: takes the request's trace (or starts one), runs the
/// request in it, logs the access line, and answers with `traceparent`.
pub async fn http(request: Request, next: Next) -> Response {
    let incoming = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    let context = incoming.map_or_else(TraceContext::root, |parent| parent.child());
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let trace_id = context.trace_id();
    let span = tracing::info_span!("request", trace_id = %trace_id);
    let (started, since) = (Instant::now(), SystemTime::now());
    let mut response = scope(context, next.run(request)).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&context.header()) {
        response.headers_mut().insert(HEADER, value);
    }
    let status = response.status().as_u16();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        tracing::info!(target: "runnel::access", %method, path, status, duration_ms = format!("{millis:.1}"), trace_id, "{method} {path} {status}");
    });
    if otlp::enabled() {
        let route = response.extensions().get::<Route>().map(|r| r.0.as_str().to_string());
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        let name = match route {
            Some(route) => {
                let name = format!("{method} {route}");
                attributes.push(KeyValue::new("http.route", route));
                name
            }
            None => method.to_string(),
        };
        otlp::Finished {
            name: name.into(),
            kind: SpanKind::Server,
            context,
            parent: incoming,
            start: since,
            attributes,
            error: (status >= 500).then(|| format!("answered {status}")),
        }
        .export();
    }
    response
}

/// The route template a response was routed by, for its span's name.
#[derive(Clone)]
struct Route(MatchedPath);

/// HTTP route layer: hands the route template to [`http`] (which runs
/// before routing) in the response's extensions.
pub async fn route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(value).unwrap();
        assert_eq!(parsed.header(), value);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parsed.child();
        assert_eq!(child.trace_id(), parsed.trace_id());
        assert_ne!(child.span_id(), parsed.span_id());
        // A later version may add fields.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let root = TraceContext::root();
        assert_eq!(TraceContext::parse(&root.header()), Some(root));
    }

    #[tokio::test]
    async fn the_current_trace_is_the_scope_s() {
        assert_eq!(current(), None);
        let context = TraceContext::root();
        assert_eq!(scope(context, async { current() }).await, Some(context));
    }
}
