//! `person-to-comicbook`: a Runnel function, run by the host for every record
//! on the `person` topic (the full person, published on every update).
//!
//! It sets `firstname` and `lastname` of that person in every role list of
//! every comicbook that embeds them (`persons.<ROLE>[]`, matched by `_id`),
//! and touches no one else. Applying the same record twice changes nothing
//! more, so redelivery is harmless. A record with no payload (a tombstone)
//! has nothing to copy and is skipped.

use runnel_guest::{Guest, HandlerError, Message, documents, logging};
use serde::Deserialize;
use serde_json::json;

/// The roles of a comicbook, as the host's `Role` names them.
const ROLES: [&str; 8] = ["WRITER", "ARTIST", "PENCILLER", "INKER", "COLORIST", "LETTERER", "COVER_ARTIST", "EDITOR"];

#[derive(Debug, Deserialize)]
struct Person {
    id: String,
    firstname: String,
    lastname: String,
}

struct PersonToComicbook;

impl Guest for PersonToComicbook {
    fn handle(message: Message) -> Result<(), HandlerError> {
        if message.payload.is_empty() {
            return Ok(());
        }
        let person: Person = message.json()?;
        if person.id.is_empty() {
            return Err(HandlerError::BadInput("the person has an empty id".into()));
        }
        if message.key.as_deref().is_some_and(|key| key != person.id.as_bytes()) {
            return Err(HandlerError::BadInput(format!("the record's key is not the person's id '{}'", person.id)));
        }

        let result = documents::update_all("comicbooks", &renames(&person))?;
        logging::log(logging::Level::Info, &format!("person {} renamed in {} role list(s)", person.id, result.modified));
        Ok(())
    }
}

/// One update per role, all sent in one request: each finds the
/// comicbooks that list the person in that role (a filter an index on
/// `persons.<ROLE>._id` answers) and renames the person's entries there
/// (the `$[p]` array filter). An update per role, not one over all roles:
/// `$[p]` fails on a comicbook that lacks the role's list, and one filter
/// over all roles (an `$or`) is a collection scan on a server that does not
/// combine indexes. The person's values are set as they are, never read as
/// operators or field paths.
fn renames(person: &Person) -> Vec<documents::Update> {
    ROLES
        .iter()
        .map(|role| documents::Update {
            filter: json!({ format!("persons.{role}._id"): person.id }),
            update: json!({ "$set": {
                format!("persons.{role}.$[p].firstname"): person.firstname,
                format!("persons.{role}.$[p].lastname"): person.lastname,
            }}),
            array_filters: vec![json!({ "p._id": person.id })],
        })
        .collect()
}

runnel_guest::export_function!(PersonToComicbook);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_guest::testing::{TestHost, message};

    #[test]
    fn renames_the_person_in_every_role() {
        let mut host = TestHost::new().grant("comicbooks");
        let payload = r#"{"id": "p1", "firstname": "Stan", "lastname": "Lee"}"#;
        host.run(|| PersonToComicbook::handle(message(payload))).unwrap();
        assert_eq!(host.updates.len(), ROLES.len(), "one update per role, in one call");
        for ((collection, filter, update, array_filters), role) in host.updates.iter().zip(ROLES) {
            assert_eq!(collection, "comicbooks");
            assert_eq!(filter, &json!({ format!("persons.{role}._id"): "p1" }));
            assert_eq!(update, &json!({ "$set": {
                format!("persons.{role}.$[p].firstname"): "Stan",
                format!("persons.{role}.$[p].lastname"): "Lee",
            }}));
            assert_eq!(array_filters, &vec![json!({ "p._id": "p1" })]);
        }
    }

    #[test]
    fn names_that_look_like_operators_are_set_as_they_are() {
        let mut host = TestHost::new().grant("comicbooks");
        let payload = r#"{"id": "p1", "firstname": "$set", "lastname": "$$ROOT"}"#;
        host.run(|| PersonToComicbook::handle(message(payload))).unwrap();
        let (_, _, update, _) = &host.updates[0];
        assert_eq!(update["$set"]["persons.WRITER.$[p].firstname"], "$set");
        assert_eq!(update["$set"]["persons.WRITER.$[p].lastname"], "$$ROOT");
    }

    #[test]
    fn a_tombstone_is_skipped_and_garbage_is_bad_input() {
        let mut host = TestHost::new();
        host.run(|| PersonToComicbook::handle(message(""))).unwrap();
        let outcome = host.run(|| PersonToComicbook::handle(message("{")));
        assert!(matches!(outcome, Err(HandlerError::BadInput(_))));
        let mut keyed = message(r#"{"id": "p1", "firstname": "A", "lastname": "B"}"#);
        keyed.key = Some(b"p2".to_vec());
        assert!(matches!(host.run(|| PersonToComicbook::handle(keyed)), Err(HandlerError::BadInput(_))));
        assert!(host.updates.is_empty());
    }
}
