//! Versions kept durably in the host's database, so that every host pointed
//! at the same database serves the same active version of each function,
//! and a host that restarts serves it again.
//!
//! | collection | one document per | |
//! |---|---|---|
//! | `runnel_versions` | version | `_id` = the version id, function, manifest text, component digest and size, first deploy time, signature and signer |
//! | `runnel_chunks` | 255 KiB of a component | `_id` = `<component digest>/<n>`; shared by versions with the same component |
//! | `runnel_functions` | function | the active version (none once undeployed), a `revision` that grows with every change, and the history of activations (the last 100) |
//!
//! Components are content-addressed, so every write is idempotent: a deploy
//! interrupted half-way and run again writes the same documents.

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{self, Binary, Bson, DateTime, Document, doc, spec::BinarySubtype},
    options::{ReturnDocument, UpdateOptions},
};
use serde::{Deserialize, Serialize};

/// Activations kept in a function's history, newest last.
const HISTORY_KEPT: i32 = 100;

const CHUNK_BYTES: usize = 255 * 1024;

#[derive(Clone)]
pub struct VersionStore {
    versions: Collection<VersionDoc>,
    chunks: Collection<Document>,
    functions: Collection<FunctionDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionDoc {
    #[serde(rename = "_id")]
    pub version: String,
    pub function: String,
    /// Left out of listings.
    #[serde(default)]
    pub manifest: String,
    pub component_digest: String,
    pub size: i64,
    pub chunks: i32,
    pub deployed_at: DateTime,
    /// The signature document it was deployed with (left out of listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The trusted key that signed it, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDoc {
    #[serde(rename = "_id")]
    pub name: String,
    pub active: Option<String>,
    pub revision: i64,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One change of a function's active version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// None for an undeploy.
    pub version: Option<String>,
    /// deploy, rollback, undeploy, seed or reload.
    pub action: String,
    pub at: DateTime,
}

impl VersionStore {
    pub fn new(database: &Database) -> Self {
        VersionStore {
            versions: database.collection("runnel_versions"),
            chunks: database.collection("runnel_chunks"),
            functions: database.collection("runnel_functions"),
        }
    }

    /// Keeps a version (its component in chunks) and, if `signed`, its
    /// signature and signer; a version kept before keeps its bytes.
    pub async fn put_version(
        &self,
        version: &str,
        function: &str,
        manifest: &str,
        component_digest: &str,
        component: &[u8],
        signed: Option<(&str, &str)>,
    ) -> mongodb::error::Result<()> {
        if self.versions.find_one(doc! { "_id": version }).await?.is_some() {
            if let Some((signature, signer)) = signed {
                self.versions
                    .update_one(doc! { "_id": version }, doc! { "$set": { "signature": signature, "signer": signer } })
                    .await?;
            }
            return Ok(());
        }
        let upsert = UpdateOptions::builder().upsert(true).build();
        let mut chunks = 0;
        for (n, chunk) in component.chunks(CHUNK_BYTES).enumerate() {
            let data = Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: chunk.to_vec() });
            self.chunks
                .update_one(doc! { "_id": format!("{component_digest}/{n}") }, doc! { "$set": { "data": data } })
                .with_options(upsert.clone())
                .await?;
            chunks += 1;
        }
        let doc = VersionDoc {
            version: version.to_string(),
            function: function.to_string(),
            manifest: manifest.to_string(),
            component_digest: component_digest.to_string(),
            size: component.len() as i64,
            chunks,
            deployed_at: DateTime::now(),
            signature: signed.map(|(s, _)| s.to_string()),
            signer: signed.map(|(_, s)| s.to_string()),
        };
        let doc = bson::to_document(&doc).map_err(mongodb::error::Error::custom)?;
        self.versions
            .clone_with_type::<Document>()
            .update_one(doc! { "_id": version }, doc! { "$setOnInsert": doc })
            .with_options(upsert)
            .await?;
        Ok(())
    }

    pub async fn version(&self, version: &str) -> mongodb::error::Result<Option<VersionDoc>> {
        self.versions.find_one(doc! { "_id": version }).await
    }

    /// Every version of `function`, newest first.
    pub async fn versions_of(&self, function: &str) -> mongodb::error::Result<Vec<VersionDoc>> {
        self.versions
            .find(doc! { "function": function })
            .projection(doc! { "manifest": 0, "signature": 0 })
            .sort(doc! { "deployedAt": -1 })
            .await?
            .try_collect()
            .await
    }

    /// A version's component, put together from its chunks.
    pub async fn component(&self, version: &VersionDoc) -> mongodb::error::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(version.size.max(0) as usize);
        for n in 0..version.chunks {
            let id = format!("{}/{n}", version.component_digest);
            let chunk = self
                .chunks
                .find_one(doc! { "_id": &id })
                .await?
                .ok_or_else(|| mongodb::error::Error::custom(format!("chunk {id} is missing")))?;
            let data = chunk
                .get_binary_generic("data")
                .map_err(|e| mongodb::error::Error::custom(format!("chunk {id}: {e}")))?;
            bytes.extend_from_slice(data);
        }
        if bytes.len() as i64 != version.size {
            return Err(mongodb::error::Error::custom(format!("version {} is incomplete", version.version)));
        }
        Ok(bytes)
    }

    /// Makes `version` (None: nothing) the active one of `function`;
    /// returns the function's new state.
    pub async fn set_active(&self, function: &str, version: Option<&str>, action: &str) -> mongodb::error::Result<FunctionDoc> {
        let entry = doc! { "version": version, "action": action, "at": DateTime::now() };
        self.functions
            .find_one_and_update(
                doc! { "_id": function },
                doc! { "$set": { "active": version }, "$inc": { "revision": 1_i64 }, "$push": { "history": { "$each": [entry], "$slice": -HISTORY_KEPT } } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| mongodb::error::Error::custom("the function document vanished"))
    }

    /// A function's active version and revision, without its history.
    pub async fn head(&self, name: &str) -> mongodb::error::Result<Option<FunctionDoc>> {
        self.functions.find_one(doc! { "_id": name }).projection(doc! { "history": 0 }).await
    }

    pub async fn function(&self, name: &str) -> mongodb::error::Result<Option<FunctionDoc>> {
        self.functions.find_one(doc! { "_id": name }).await
    }

    /// Every function's name and revision: what hosts poll.
    pub async fn revisions(&self) -> mongodb::error::Result<Vec<(String, i64)>> {
        let docs: Vec<Document> = self
            .functions
            .clone_with_type::<Document>()
            .find(Document::new())
            .projection(doc! { "revision": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d.get_i64("revision").ok()?)))
            .collect())
    }

    pub async fn functions(&self) -> mongodb::error::Result<Vec<FunctionDoc>> {
        self.functions.find(Document::new()).sort(doc! { "_id": 1 }).await?.try_collect().await
    }
}
