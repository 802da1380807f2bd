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
use serde_json::{Value, json};

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

        let result = documents::update("comicbooks", &holding(&person.id), &rename(&person), &[])?;
        logging::log(logging::Level::Info, &format!("person {} renamed in {} comicbook(s)", person.id, result.modified));
        Ok(())
    }
}

/// Every comicbook that lists the person in any role.
fn holding(id: &str) -> Value {
    let roles: Vec<Value> = ROLES.iter().map(|role| json!({ format!("persons.{role}._id"): id })).collect();
    json!({ "$or": roles })
}

/// One update for all roles: a pipeline stage that rewrites each role list a
/// comicbook has (the person's entries get the new names, everyone else is
/// kept as is) and leaves the roles it does not have absent. An update with
/// `$[id]` array filters cannot do this in one call: it fails on a document
/// that lacks one of the role lists. The person's values are `$literal`s, so
/// a name starting with `$` is never read as a field path.
fn rename(person: &Person) -> Value {
    let roles: serde_json::Map<String, Value> = ROLES
        .iter()
        .map(|role| {
            let list = format!("$persons.{role}");
            let renamed = json!({ "$map": { "input": list, "as": "p", "in": { "$cond": [
                { "$eq": ["$$p._id", { "$literal": person.id }] },
                { "$mergeObjects": ["$$p", { "$literal": { "firstname": person.firstname, "lastname": person.lastname } }] },
                "$$p",
            ]}}});
            (format!("persons.{role}"), json!({ "$cond": [{ "$isArray": list }, renamed, "$$REMOVE"] }))
        })
        .collect();
    json!([{ "$set": roles }])
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
        assert_eq!(host.updates.len(), 1, "one update for all roles");
        let (collection, filter, update, array_filters) = &host.updates[0];
        assert_eq!(collection, "comicbooks");
        assert_eq!(filter["$or"].as_array().unwrap().len(), ROLES.len());
        assert_eq!(filter["$or"][0], json!({ "persons.WRITER._id": "p1" }));
        let stage = &update[0]["$set"];
        for role in ROLES {
            let list = &stage[format!("persons.{role}")];
            assert_eq!(list["$cond"][0], json!({ "$isArray": format!("$persons.{role}") }));
            assert_eq!(list["$cond"][2], "$$REMOVE", "a role the comicbook lacks stays absent");
            let replaced = &list["$cond"][1]["$map"]["in"]["$cond"];
            assert_eq!(replaced[0], json!({ "$eq": ["$$p._id", { "$literal": "p1" }] }));
            assert_eq!(replaced[1]["$mergeObjects"][1], json!({ "$literal": { "firstname": "Stan", "lastname": "Lee" } }));
        }
        assert!(array_filters.is_empty());
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
