//! A deadline for every request of a router: a service behind it that
//! stopped answering holds no request, and no client, for long. (The
//! database driver has no socket timeout: it notices a server that stopped
//! when its heartbeats fail, and never an operation that a server still
//! answering heartbeats leaves unanswered.)

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{Problem, openapi::problem};

/// Answers 503 (with `Retry-After`) for a request its handler has not
/// answered within `limit`, and drops the handler. A change the handler had
/// already sent may still be made: the answer says so, and a change's events
/// are saved with it (the outbox), so none is lost either way.
///
/// Its warning is logged in the request's span: the access line of the same
/// trace id names the method and path, so nothing is copied per request here.
pub async fn limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "the request was not answered in time; answered 503");
            let mut response = Problem::unavailable(format!(
                "the request was not answered within {} ms (a service behind it is slow or down); \
                 a change it asked for may or may not have been made: read it back, or send it again",
                limit.as_millis()
            ))
            .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Adds the deadline's answer to every operation of `doc` (the routes the
/// deadline is layered over), merged with a 503 they describe already.
pub fn document(doc: &mut utoipa::openapi::OpenApi, limit: Duration) {
    use utoipa::openapi::RefOr;
    let ours = format!(
        "Not answered within {} ms (`RUNNEL_REQUEST_TIMEOUT_MS`): a service behind it is slow or down; \
         `Retry-After` says when to try again. A change the request asked for may or may not have been made",
        limit.as_millis()
    );
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let description = match operation.responses.responses.get("503") {
                Some(RefOr::T(theirs)) => format!("{}; or: {ours}", theirs.description),
                _ => ours.clone(),
            };
            operation.responses.responses.insert("503".to_string(), RefOr::T(problem(&description)));
        }
    }
}
