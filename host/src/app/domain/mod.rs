//! Domain types: the resources of Runnel's HTTP API and the events it
//! produces, with their JSON shapes (camelCase, as the original services had)
//! and their validation rules. Nothing here knows about HTTP, MongoDB or Kafka.

pub mod comicbook;
pub mod person;
pub mod store;
pub mod store_alert;

/// A rule a client-supplied value broke, naming the field (JSON path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// A required text field: present and not blank; returned trimmed.
pub(crate) fn required_text(field: &str, value: Option<String>) -> Result<String, FieldError> {
    match value.map(|v| v.trim().to_string()) {
        None => Err(FieldError::new(field, "is required")),
        Some(v) if v.is_empty() => Err(FieldError::new(field, "must not be blank")),
        Some(v) => Ok(v),
    }
}

/// A body's `id` must be absent or equal the id in the path.
pub(crate) fn check_body_id(body_id: Option<&str>, id: &str) -> Result<(), FieldError> {
    match body_id {
        Some(b) if b != id => Err(FieldError::new("id", format!("must be absent or equal '{id}'"))),
        _ => Ok(()),
    }
}

/// Checks an id a client proposes for a new resource: 1 to 200 printable
/// characters, none of them `/`, so that it has a URL.
pub fn check_proposed_id(id: &str) -> Result<(), FieldError> {
    if id.trim().is_empty() || id.chars().count() > 200 || id.chars().any(|c| c.is_control() || c == '/') {
        return Err(FieldError::new("id", "must be 1 to 200 printable characters, without '/'"));
    }
    Ok(())
}

/// A server-generated resource id (a UUID string).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
