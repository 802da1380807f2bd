//! The one error shape of the HTTP API: RFC 7807 `application/problem+json`,
//! with the offending `field` (a JSON path) when there is one.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;


/// An RFC 7807 problem: what went wrong, and the field at fault if any.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `title` says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    /// The HTTP status.
    #[serde(serialize_with = "status_code")]
    #[schema(value_type = u16)]
    pub status: StatusCode,
    pub detail: String,
    /// The JSON path of the offending field or query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn status_code<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem { kind: "about:blank", title, status, detail: detail.into(), field: None }
    }

    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "Invalid JSON", detail)
    }

    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem { field: Some(field.into()), ..Problem::new(StatusCode::BAD_REQUEST, "Invalid field", detail) }
    }

    pub fn invalid_parameter(name: &str, detail: impl Into<String>) -> Self {
        Problem {
            field: Some(name.to_string()),
            ..Problem::new(StatusCode::BAD_REQUEST, "Invalid query parameter", detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn method_not_allowed(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", detail)
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type", detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    /// A request the server understood but cannot carry out (e.g. a
    /// component of the wrong world).
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable content", detail)
    }

    /// Adds the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}
