//! A typed collection of documents keyed by a string `_id`: the CRUD every
//! resource needs, written once.

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{Document, doc},
};
use serde::{Serialize, de::DeserializeOwned};

/// A database failure. Not the client's fault: the API answers 503.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("a document with this id already exists")]
    Duplicate,
    #[error("the event of its last change is not published yet (is the broker down?); try again shortly")]
    EventsPending,
    #[error("database unavailable: {0}")]
    Unavailable(#[from] mongodb::error::Error),
}

/// One page of a listing, and how many documents there are in all.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// The documents of one collection, as `D`.
#[derive(Debug, Clone)]
pub struct Repo<D: Send + Sync> {
    collection: Collection<D>,
}

impl<D> Repo<D>
where
    D: Serialize + DeserializeOwned + Send + Sync + Unpin,
{
    pub fn new(db: &Database, name: &str) -> Self {
        Repo { collection: db.collection(name) }
    }

    pub async fn insert(&self, doc: &D) -> Result<(), StorageError> {
        self.collection.insert_one(doc).await.map_err(classify)?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<D>, StorageError> {
        Ok(self.collection.find_one(doc! { "_id": id }).await?)
    }

    /// Documents sorted by `_id` (stable across pages), `skip` then `limit`.
    pub async fn list(&self, skip: u64, limit: i64) -> Result<Page<D>, StorageError> {
        let items = self
            .collection
            .find(Document::new())
            .sort(doc! { "_id": 1 })
            .skip(skip)
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        let total = self.collection.count_documents(Document::new()).await?;
        Ok(Page { items, total })
    }

    /// The ids of up to `limit` documents matching `filter`, and how many match.
    pub async fn ids_matching(&self, filter: Document, limit: i64) -> Result<(Vec<String>, u64), StorageError> {
        let raw: Collection<Document> = self.collection.clone_with_type();
        let docs: Vec<Document> = raw
            .find(filter.clone())
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        let ids = docs.iter().filter_map(|d| d.get_str("_id").ok().map(String::from)).collect();
        let total = raw.count_documents(filter).await?;
        Ok((ids, total))
    }

    /// Replaces the document `id`; false when there is none.
    pub async fn replace(&self, id: &str, doc: &D) -> Result<bool, StorageError> {
        let result = self.collection.replace_one(doc! { "_id": id }, doc).await?;
        Ok(result.matched_count == 1)
    }

    /// Replaces the document `id` and appends `event` to its pending
    /// events, in one atomic write; false when there is none.
    pub async fn replace_announcing(&self, id: &str, doc: &D, event: &Pending) -> Result<bool, StorageError> {
        let mut replacement = mongodb::bson::to_document(doc)?;
        replacement.insert("_id", id);
        let raw: Collection<Document> = self.collection.clone_with_type();
        let result = raw.update_one(doc! { "_id": id }, event.replace_and_append(replacement)).await?;
        Ok(result.matched_count == 1)
    }

    /// Deletes the document `id`; false when there is none. A document
    /// whose last change's event is not published yet is kept (the event
    /// would be lost with it).
    pub async fn delete(&self, id: &str) -> Result<bool, StorageError> {
        let mut filter = outbox::nothing_pending();
        filter.insert("_id", id);
        let result = self.collection.delete_one(filter).await?;
        if result.deleted_count == 1 {
            return Ok(true);
        }
        if self.collection.count_documents(doc! { "_id": id }).await? > 0 {
            return Err(StorageError::EventsPending);
        }
        Ok(false)
    }
}

use crate::platform::{
    outbox::{self, Pending},
    storage::is_duplicate_key,
};

impl From<mongodb::bson::ser::Error> for StorageError {
    fn from(e: mongodb::bson::ser::Error) -> Self {
        StorageError::Unavailable(e.into())
    }
}

fn classify(e: mongodb::error::Error) -> StorageError {
    if is_duplicate_key(&e) { StorageError::Duplicate } else { StorageError::Unavailable(e) }
}
