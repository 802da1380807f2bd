//! The `comicbooks` collection, in the original service's shape:
//! `{_id, name, persons: {ROLE: [{_id, firstname, lastname}]}}`.

use std::collections::BTreeMap;

use mongodb::{
    Database, IndexModel,
    bson::{Document, doc},
};
use serde::{Deserialize, Serialize};

use crate::app::domain::comicbook::{Comicbook, PersonRef, Role};

pub const COLLECTION: &str = "comicbooks";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComicbookDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub persons: BTreeMap<Role, Vec<PersonRefDoc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersonRefDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub firstname: String,
    pub lastname: String,
}

impl From<&Comicbook> for ComicbookDoc {
    fn from(c: &Comicbook) -> Self {
        let persons = c
            .persons
            .iter()
            .map(|(role, list)| {
                let docs = list
                    .iter()
                    .map(|p| PersonRefDoc { id: p.id.clone(), firstname: p.firstname.clone(), lastname: p.lastname.clone() })
                    .collect();
                (*role, docs)
            })
            .collect();
        ComicbookDoc { id: c.id.clone(), name: c.name.clone(), persons }
    }
}

impl From<ComicbookDoc> for Comicbook {
    fn from(d: ComicbookDoc) -> Self {
        let persons = d
            .persons
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(role, list)| {
                let refs = list
                    .into_iter()
                    .map(|p| PersonRef { id: p.id, firstname: p.firstname, lastname: p.lastname })
                    .collect();
                (role, refs)
            })
            .collect();
        Comicbook { id: d.id, name: d.name, persons }
    }
}

/// Matches the comicbooks that embed person `id` in any role.
pub fn embedding(id: &str) -> Document {
    let any_role: Vec<Document> =
        Role::ALL.iter().map(|role| doc! { format!("persons.{}._id", role.as_str()): id }).collect();
    doc! { "$or": any_role }
}

/// One index per role on the embedded persons' ids: what finds the
/// comicbooks crediting a person (deleting a person; `person-to-comicbook`'s
/// rename, one update per role), instead of reading every comicbook. Made
/// at start; an index that exists already is left as it is.
pub async fn ensure_indexes(database: &Database) -> mongodb::error::Result<()> {
    let indexes = Role::ALL.iter().map(|role| IndexModel::builder().keys(doc! { format!("persons.{}._id", role.as_str()): 1 }).build());
    database.collection::<Document>(COLLECTION).create_indexes(indexes).await?;
    Ok(())
}
