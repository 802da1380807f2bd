//! Comicbook: embeds the persons who made it, by role, as the original service
//! stored it (a copy of each person's names, kept current by the
//! `person-to-comicbook` function).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, required_text};

/// The roles a person can have in a comicbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Writer,
    Artist,
    Penciller,
    Inker,
    Colorist,
    Letterer,
    CoverArtist,
    Editor,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Writer,
        Role::Artist,
        Role::Penciller,
        Role::Inker,
        Role::Colorist,
        Role::Letterer,
        Role::CoverArtist,
        Role::Editor,
    ];

    /// The role named `name` (`WRITER`, `COVER_ARTIST`, …).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "WRITER",
            Role::Artist => "ARTIST",
            Role::Penciller => "PENCILLER",
            Role::Inker => "INKER",
            Role::Colorist => "COLORIST",
            Role::Letterer => "LETTERER",
            Role::CoverArtist => "COVER_ARTIST",
            Role::Editor => "EDITOR",
        }
    }
}

/// A person as a comicbook embeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersonRef {
    pub id: String,
    pub firstname: String,
    pub lastname: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comicbook {
    pub id: String,
    pub name: String,
    /// Role → the persons in that role.
    pub persons: BTreeMap<Role, Vec<PersonRef>>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersonRefInput {
    #[schema(required = true)]
    pub id: Option<String>,
    #[schema(required = true)]
    pub firstname: Option<String>,
    #[schema(required = true)]
    pub lastname: Option<String>,
}

/// A comicbook as a client sends it (POST, PUT, and the result of a PATCH).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComicbookInput {
    /// Absent, or equal to the id in the path.
    pub id: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
    /// Role (see `Role`) → persons; roles not listed are empty. Keys are
    /// checked after parsing, so that an unknown one can be named.
    #[serde(default)]
    pub persons: Option<BTreeMap<String, Vec<PersonRefInput>>>,
}

impl ComicbookInput {
    pub fn into_comicbook(self, id: String) -> Result<Comicbook, FieldError> {
        super::check_body_id(self.id.as_deref(), &id)?;
        let name = required_text("name", self.name)?;
        let mut persons = BTreeMap::new();
        for (key, list) in self.persons.unwrap_or_default() {
            let role = Role::parse(&key).ok_or_else(|| {
                let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                FieldError::new(format!("persons.{key}"), format!("unknown role; expected one of {}", known.join(", ")))
            })?;
            let mut refs: Vec<PersonRef> = Vec::with_capacity(list.len());
            for (i, p) in list.into_iter().enumerate() {
                let at = |field: &str| format!("persons.{}[{i}].{field}", role.as_str());
                let person = PersonRef {
                    id: required_text(&at("id"), p.id)?,
                    firstname: required_text(&at("firstname"), p.firstname)?,
                    lastname: required_text(&at("lastname"), p.lastname)?,
                };
                if refs.iter().any(|r| r.id == person.id) {
                    return Err(FieldError::new(at("id"), "is listed twice in this role"));
                }
                refs.push(person);
            }
            if !refs.is_empty() {
                persons.insert(role, refs);
            }
        }
        Ok(Comicbook { id, name, persons })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> ComicbookInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn embedded_persons_are_checked_by_path() {
        let e = input(r#"{"name":"X","persons":{"INKER":[{"id":"1","firstname":"A"}]}}"#)
            .into_comicbook("c".into())
            .unwrap_err();
        assert_eq!(e.field, "persons.INKER[0].lastname");
        let e = input(
            r#"{"name":"X","persons":{"WRITER":[{"id":"1","firstname":"A","lastname":"B"},{"id":"1","firstname":"A","lastname":"B"}]}}"#,
        )
        .into_comicbook("c".into())
        .unwrap_err();
        assert_eq!(e.field, "persons.WRITER[1].id");
    }

    #[test]
    fn roles_use_the_original_names() {
        let c = input(r#"{"name":"X","persons":{"COVER_ARTIST":[{"id":"1","firstname":"A","lastname":"B"}],"EDITOR":[]}}"#)
            .into_comicbook("c".into())
            .unwrap();
        assert_eq!(c.persons.len(), 1);
        assert!(serde_json::to_string(&c).unwrap().contains(r#""COVER_ARTIST":[{"id":"1""#));
        let e = input(r#"{"name":"X","persons":{"DRUMMER":[]}}"#).into_comicbook("c".into()).unwrap_err();
        assert_eq!(e.field, "persons.DRUMMER");
    }
}
