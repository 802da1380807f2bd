//! `/api/persons`: persons; every update publishes the full person on the
//! `person` topic (key: the person id), which keeps comicbooks current.
//!
//! A person that comicbooks still embed cannot be deleted (409 naming them):
//! remove them from those comicbooks first. Deleting them silently would
//! leave comicbooks crediting someone who no longer exists.

use chrono::{DateTime, Utc};

use super::{
    AppState,
    resource::{Resource, Writable},
};
use crate::{
    platform::http::Problem,
    app::domain::{
        FieldError,
        person::{PERSON_TOPIC, Person, PersonInput},
    },
    platform::kafka::Event,
    app::storage::{
        Repo,
        comicbooks::{self, ComicbookDoc},
        persons::{COLLECTION, PersonDoc},
    },
};

pub struct Persons;

impl Resource for Persons {
    const NAME: &'static str = "person";
    const PATH: &'static str = "/api/persons";
    const COLLECTION: &'static str = COLLECTION;
    type Item = Person;
    type Doc = PersonDoc;

    async fn check_delete(state: &AppState, id: &str) -> Result<(), Problem> {
        let comicbooks: Repo<ComicbookDoc> = Repo::new(&state.database, comicbooks::COLLECTION);
        let (ids, total) = comicbooks.ids_matching(comicbooks::embedding(id), 10).await?;
        if total == 0 {
            return Ok(());
        }
        let more = if total > ids.len() as u64 { format!(" and {} more", total - ids.len() as u64) } else { String::new() };
        Err(Problem::conflict(format!(
            "person '{id}' is credited in {total} comicbook(s): {}{more}; remove them from those first",
            ids.join(", ")
        )))
    }

    fn delete_problems() -> &'static [(u16, &'static str)] {
        &[(409, "Comicbooks still embed this person")]
    }
}

impl Writable for Persons {
    type Input = PersonInput;

    fn create(input: PersonInput, id: String, _now: DateTime<Utc>) -> Result<Person, FieldError> {
        input.into_person(id)
    }

    fn replace(input: PersonInput, existing: &Person, _now: DateTime<Utc>) -> Result<Person, FieldError> {
        input.into_person(existing.id.clone())
    }

    fn proposed_id(input: &PersonInput) -> Option<&str> {
        input.id.as_deref()
    }

    fn id(item: &Person) -> &str {
        &item.id
    }

    fn updated_event(item: &Person) -> Option<Event<'_>> {
        Some(Event::json(PERSON_TOPIC, &item.id, item))
    }
}
