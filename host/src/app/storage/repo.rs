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

    /// Deletes the document `id`; false when there is none.
    pub async fn delete(&self, id: &str) -> Result<bool, StorageError> {
        let result = self.collection.delete_one(doc! { "_id": id }).await?;
        Ok(result.deleted_count == 1)
    }
}

use crate::platform::storage::is_duplicate_key;

fn classify(e: mongodb::error::Error) -> StorageError {
    if is_duplicate_key(&e) { StorageError::Duplicate } else { StorageError::Unavailable(e) }
}
