//! Reading requests: JSON bodies whose errors name the field at fault, and
//! paging parameters.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, Path, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::Problem;

/// The `{id}` of a route. Unlike a bare `Path`, a malformed one (say, not
/// UTF-8 once decoded) is a problem+json 400 naming `id`.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            Err(e) => Err(Problem::invalid_field("id", format!("id: {}", e.body_text()))),
        }
    }
}

/// The media type of a JSON merge patch (RFC 7396).
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// Parses a JSON request body into `T`.
///
/// - a content type other than `application/json` (or `…+json`) → 415;
/// - a body over the configured limit → 413;
/// - malformed JSON, or JSON that is not an object → 400;
/// - a value of the wrong type → 400 naming its JSON path.
pub fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    from_value(json_object(headers, body, &["application/json", "application/*+json"])?)
}

/// Checks the content type against `accepted` (`application/*+json` accepts
/// any JSON-based type) and parses the body as a JSON object.
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    accepted: &[&str],
) -> Result<serde_json::Value, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = accepted.iter().any(|a| match a.strip_prefix("application/*") {
        Some(suffix) => essence.starts_with("application/") && essence.ends_with(suffix),
        None => essence == *a,
    });
    if !ok {
        return Err(Problem::unsupported_media_type(format!(
            "expected Content-Type {}, got '{content_type}'",
            accepted[0]
        )));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::payload_too_large("the request body is larger than the server accepts")
        } else {
            Problem::invalid_json(rejection.body_text())
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Problem::invalid_json(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Problem::invalid_json("the body must be a JSON object"));
    }
    Ok(value)
}

/// Converts a JSON value into `T`, naming the field of the first mismatch.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        field_problem(&path, &e.into_inner().to_string())
    })
}

/// serde reports a missing field at its parent's path; name the field itself.
fn field_problem(path: &str, message: &str) -> Problem {
    let message = strip_position(message);
    let field = match message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        Some(name) if path == "." => name.to_string(),
        Some(name) => format!("{path}.{name}"),
        None if path == "." => String::new(),
        None => path.to_string(),
    };
    if field.is_empty() {
        Problem::invalid_json(message.to_string())
    } else {
        Problem::invalid_field(field.clone(), format!("{field}: {message}"))
    }
}

/// Drops serde_json's " at line L column C" suffix, meaningless to a client
/// once the field is named.
fn strip_position(message: &str) -> &str {
    message.rfind(" at line ").map_or(message, |i| &message[..i])
}

/// `page` (from 0) and `size` (1..=1000, default 20) of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page: u64,
    pub size: u64,
}

pub const DEFAULT_PAGE_SIZE: u64 = 20;
pub const MAX_PAGE_SIZE: u64 = 1000;

impl Paging {
    pub fn from_query(query: Option<&str>) -> Result<Self, Problem> {
        let mut paging = Paging { page: 0, size: DEFAULT_PAGE_SIZE };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let number = || {
                value.parse::<u64>().map_err(|_| {
                    Problem::invalid_parameter(&key, format!("{key}: '{value}' is not a non-negative integer"))
                })
            };
            match key.as_ref() {
                "page" => paging.page = number()?,
                "size" => {
                    paging.size = number()?;
                    if !(1..=MAX_PAGE_SIZE).contains(&paging.size) {
                        return Err(Problem::invalid_parameter(
                            "size",
                            format!("size: must be between 1 and {MAX_PAGE_SIZE}"),
                        ));
                    }
                }
                _ => {}
            }
        }
        if paging.page.checked_mul(paging.size).is_none_or(|skip| skip > i64::MAX as u64) {
            return Err(Problem::invalid_parameter("page", "page: too large"));
        }
        Ok(paging)
    }

    pub fn skip(&self) -> u64 {
        self.page * self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_defaults_and_limits() {
        assert_eq!(Paging::from_query(None).unwrap(), Paging { page: 0, size: 20 });
        assert_eq!(Paging::from_query(Some("page=2&size=5")).unwrap().skip(), 10);
        for bad in ["size=0", "size=1001", "page=-1", "size=x", "page=99999999999999999999"] {
            let p = Paging::from_query(Some(bad)).unwrap_err();
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn missing_fields_are_named_by_path() {
        assert_eq!(field_problem(".", "missing field `name`").field.as_deref(), Some("name"));
        assert_eq!(field_problem("persons", "missing field `id`").field.as_deref(), Some("persons.id"));
        assert_eq!(
            field_problem("status", "unknown variant `X` at line 1 column 9").detail,
            "status: unknown variant `X`"
        );
    }
}
