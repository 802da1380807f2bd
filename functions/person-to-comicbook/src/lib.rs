//! `person-to-comicbook`: a Runnel function, run by the host for every record
//! on the `person` topic (the full person, published on every update).
//!
//! It sets `firstname` and `lastname` of that person in every role list of
//! every comicbook that embeds them (`persons.<ROLE>[]`, matched by `_id`),
//! and touches no one else. Applying the same record twice changes nothing
//! more, so redelivery is harmless. A record with no payload (a tombstone)
//! has nothing to copy and is skipped.
#![no_std]

extern crate alloc;

use alloc::{format, string::{String, ToString}, vec};

use runnel_guest::{Guest, HandlerError, Message, documents, logging};
use serde::Deserialize;
use serde_json::json;

const COLLECTION: &str = "comicbooks";

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
        let person: Person = serde_json::from_slice(&message.payload)
            .map_err(|e| HandlerError::BadInput(format!("not a person: {e}")))?;
        if person.id.is_empty() {
            return Err(HandlerError::BadInput("the person has an empty id".into()));
        }
        if let Some(key) = &message.key
            && key.as_slice() != person.id.as_bytes()
        {
            return Err(HandlerError::BadInput(format!(
                "the record's key is not the person's id '{}'",
                person.id
            )));
        }

        let mut modified = 0;
        // One update per role: an array filter needs its array to exist, and
        // a comicbook lists only the roles it has.
        for role in ROLES {
            let filter = json!({ format!("persons.{role}._id"): person.id });
            let update = json!({ "$set": {
                format!("persons.{role}.$[p].firstname"): person.firstname,
                format!("persons.{role}.$[p].lastname"): person.lastname,
            }});
            let array_filter = json!({ "p._id": person.id });
            let result = documents::update_many(
                COLLECTION,
                &filter.to_string(),
                &update.to_string(),
                &vec![array_filter.to_string()],
            )
            .map_err(|e| match e {
                documents::DocumentError::Unavailable(m) => HandlerError::RetryLater(m),
                documents::DocumentError::Invalid(m)
                | documents::DocumentError::Conflict(m)
                | documents::DocumentError::NotPermitted(m) => HandlerError::GiveUp(m),
            })?;
            modified += result.modified;
        }
        logging::log(
            logging::Level::Info,
            &format!("person {} renamed in {modified} role list(s)", person.id),
        );
        Ok(())
    }
}

runnel_guest::export_function!(PersonToComicbook);
