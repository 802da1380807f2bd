//! `/api/comicbooks`: comicbooks and the persons they embed, by role.

use chrono::{DateTime, Utc};

use super::resource::{Resource, Writable};
use crate::{
    app::domain::{
        FieldError,
        comicbook::{Comicbook, ComicbookInput},
    },
    app::storage::comicbooks::{COLLECTION, ComicbookDoc},
};

pub struct Comicbooks;

impl Resource for Comicbooks {
    const NAME: &'static str = "comicbook";
    const PATH: &'static str = "/api/comicbooks";
    const COLLECTION: &'static str = COLLECTION;
    type Item = Comicbook;
    type Doc = ComicbookDoc;
}

impl Writable for Comicbooks {
    type Input = ComicbookInput;

    fn create(input: ComicbookInput, id: String, _now: DateTime<Utc>) -> Result<Comicbook, FieldError> {
        input.into_comicbook(id)
    }

    fn replace(input: ComicbookInput, existing: &Comicbook, _now: DateTime<Utc>) -> Result<Comicbook, FieldError> {
        input.into_comicbook(existing.id.clone())
    }

    fn proposed_id(input: &ComicbookInput) -> Option<&str> {
        input.id.as_deref()
    }

    fn id(item: &Comicbook) -> &str {
        &item.id
    }
}
