//! Person: someone who makes comicbooks. Changes to a person are announced on
//! the `person` topic, from which `person-to-comicbook` updates every
//! comicbook that embeds them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, required_text};

/// Topic that receives the full person on every update (key: the person id).
pub const PERSON_TOPIC: &str = "person";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: String,
    pub firstname: String,
    pub lastname: String,
}

/// A person as a client sends it (POST, PUT, and the result of a PATCH).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersonInput {
    /// Absent, or equal to the id in the path.
    pub id: Option<String>,
    #[schema(required = true)]
    pub firstname: Option<String>,
    #[schema(required = true)]
    pub lastname: Option<String>,
}

impl PersonInput {
    pub fn into_person(self, id: String) -> Result<Person, FieldError> {
        super::check_body_id(self.id.as_deref(), &id)?;
        Ok(Person {
            id,
            firstname: required_text("firstname", self.firstname)?,
            lastname: required_text("lastname", self.lastname)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_required() {
        let e = PersonInput { firstname: Some("Jack".into()), ..Default::default() }
            .into_person("1".into())
            .unwrap_err();
        assert_eq!(e.field, "lastname");
    }
}
