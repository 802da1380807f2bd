//! The `persons` collection.

use serde::{Deserialize, Serialize};

use crate::app::domain::person::Person;

pub const COLLECTION: &str = "persons";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersonDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub firstname: String,
    pub lastname: String,
}

impl From<&Person> for PersonDoc {
    fn from(p: &Person) -> Self {
        PersonDoc { id: p.id.clone(), firstname: p.firstname.clone(), lastname: p.lastname.clone() }
    }
}

impl From<PersonDoc> for Person {
    fn from(d: PersonDoc) -> Self {
        Person { id: d.id, firstname: d.firstname, lastname: d.lastname }
    }
}
