//! The outbox: an event is stored in the same atomic write as the change it
//! announces, and a relay publishes it afterwards.
//!
//! A change's events wait in the changed document itself, in an array
//! `_outbox` that one update appends to while it replaces the rest of the
//! document (a single-document write, atomic on every MongoDB server,
//! standalone or not). So a saved change always has its event, and an event
//! exists only for a saved change: an API write succeeds while the broker is
//! down, and its events go out when the broker is back.
//!
//! The relay publishes a document's pending events in order (they share its
//! id as key, so they land in order on one partition) with an idempotent
//! producer, then removes them from the document. It is woken by every
//! write on this host, and scans the collections every second for events
//! left by another host or by a crash. A document is claimed with a lease
//! (two minutes, for up to five events) while its events are published, so
//! that two relays (two hosts) do not publish the same events; a relay that
//! dies holding one is replaced when the lease runs out.
//!
//! Each event carries a `runnel-event-id` header. An event is published twice
//! only when a relay dies (or stalls past its lease) after the broker took
//! it and before it was removed, or when a publish that timed out reached
//! the broker anyway; the trigger's journal, keyed by that id, then answers
//! the duplicate's calls, so its effects still happen once.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype},
    options::ReturnDocument,
};
use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    journal::RecordKey,
    kafka::{Event, EventProducer},
};

/// The field that holds a document's pending events.
pub const PENDING: &str = "_outbox";
/// The field that holds a relay's claim on a document.
const LEASE: &str = "_outboxLease";
/// How long a claim lasts: longer than publishing [`EVENTS_PER_CLAIM`]
/// events may take (each gets the relay producer's delivery timeout).
const LEASE_TIME: Duration = Duration::from_secs(120);
/// Events published under one claim; more are published under the next.
const EVENTS_PER_CLAIM: usize = 5;
/// How often every collection is scanned for pending events.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Documents whose events are published at the same time.
const CONCURRENT_DOCUMENTS: usize = 32;

/// The outbox of one host: the relay's wake-up channel.
#[derive(Clone)]
pub struct Outbox {
    wake: mpsc::UnboundedSender<(Arc<str>, String)>,
    /// Documents with pending events, by collection, at the relay's last scan.
    pending: Backlog,
}

type Backlog = Arc<std::sync::Mutex<std::collections::BTreeMap<Arc<str>, usize>>>;

/// One event as a document stores it until it is published.
pub struct Pending {
    /// Its `runnel-event-id`.
    pub id: String,
    doc: Document,
}

impl Pending {
    pub fn new(event: &Event<'_>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let binary = |bytes: &[u8]| Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: bytes.to_vec() });
        let mut headers: Vec<Bson> =
            event.headers.iter().map(|(k, v)| Bson::Document(doc! { "k": *k, "v": binary(v) })).collect();
        // The request's trace goes on with the event, whose parent is the
        // request's span (so a collector links the record's span to it).
        if let Some(trace) = super::trace::current()
            && !event.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(super::trace::HEADER))
        {
            headers.push(Bson::Document(doc! { "k": super::trace::HEADER, "v": binary(trace.header().as_bytes()) }));
        }
        let mut doc = doc! {
            "id": &id,
            "topic": event.topic,
            "payload": binary(&event.payload),
            "headers": headers,
            "at": DateTime::now(),
        };
        if let Some(key) = event.key {
            doc.insert("key", binary(key));
        }
        Pending { id, doc }
    }

    /// The update (an aggregation pipeline) that replaces a document with
    /// `replacement` and appends this event to its pending ones, in one
    /// write. `replacement` must hold its `_id`.
    pub fn replace_and_append(&self, replacement: Document) -> Vec<Document> {
        vec![doc! {
            "$replaceWith": {
                "$mergeObjects": [
                    // Literal: a value starting with `$` stays a value.
                    { "$literal": replacement },
                    {
                        PENDING: { "$concatArrays": [ { "$ifNull": [format!("${PENDING}"), []] }, [ { "$literal": self.doc.clone() } ] ] },
                        LEASE: format!("${LEASE}"),
                    },
                ]
            }
        }]
    }
}

/// A filter that matches documents without pending events: a deletion
/// guarded by it cannot drop an event that is not published yet.
pub fn nothing_pending() -> Document {
    doc! { format!("{PENDING}.0"): { "$exists": false } }
}

impl Outbox {
    /// Starts the relay for the pending events of `collections`; it runs
    /// until `stop` turns true.
    pub fn start(database: &Database, producer: EventProducer, collections: &[&str], stop: watch::Receiver<bool>) -> (Self, tokio::task::JoinHandle<()>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let pending = Backlog::default();
        let relay = Relay {
            database: database.clone(),
            producer,
            collections: collections.iter().map(|c| Arc::<str>::from(*c)).collect(),
            permits: Arc::new(Semaphore::new(CONCURRENT_DOCUMENTS)),
            pending: pending.clone(),
        };
        let task = tokio::spawn(relay.run(rx, stop));
        (Outbox { wake, pending }, task)
    }

    /// Documents with pending events, by collection, as the relay's last
    /// scan found them (every second).
    pub fn backlog(&self) -> Vec<(String, usize)> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    /// Tells the relay that document `id` of `collection` has a new event.
    pub fn written(&self, collection: &str, id: &str) {
        let _ = self.wake.send((Arc::from(collection), id.to_string()));
    }
}

#[derive(Clone)]
struct Relay {
    database: Database,
    producer: EventProducer,
    collections: Vec<Arc<str>>,
    permits: Arc<Semaphore>,
    pending: Backlog,
}

impl Relay {
    async fn run(self, mut wake: mpsc::UnboundedReceiver<(Arc<str>, String)>, mut stop: watch::Receiver<bool>) {
        let mut scan = tokio::time::interval(SCAN_INTERVAL);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                Some((collection, id)) = wake.recv() => self.spawn(&mut tasks, collection, id).await,
                _ = scan.tick() => {
                    for collection in self.collections.clone() {
                        match self.pending_ids(&collection).await {
                            Ok(ids) => {
                                self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(collection.clone(), ids.len());
                                for id in ids {
                                    self.spawn(&mut tasks, collection.clone(), id).await;
                                }
                            }
                            Err(e) => tracing::warn!(collection = %collection, "cannot look for pending events: {e}"),
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Publishes in flight get a moment; what is left stays pending (and
        // is published by the next relay once the lease has run out).
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    }

    async fn spawn(&self, tasks: &mut tokio::task::JoinSet<()>, collection: Arc<str>, id: String) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else { return };
        let relay = self.clone();
        tasks.spawn(async move {
            relay.publish_document(&collection, &id).await;
            drop(permit);
        });
    }

    /// Ids of documents of `collection` with pending events.
    async fn pending_ids(&self, collection: &str) -> mongodb::error::Result<Vec<String>> {
        let docs: Vec<Document> = self
            .database
            .collection::<Document>(collection)
            .find(doc! { format!("{PENDING}.0"): { "$exists": true } })
            .projection(doc! { "_id": 1 })
            .limit(1000)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(|d| d.get_str("_id").ok().map(String::from)).collect())
    }

    /// Claims document `id`, publishes its pending events in order, removes
    /// those published; again while more were appended meanwhile.
    async fn publish_document(&self, collection: &str, id: &str) {
        let documents: Collection<Document> = self.database.collection(collection);
        loop {
            let now = DateTime::now();
            let until = DateTime::from_millis(now.timestamp_millis() + LEASE_TIME.as_millis() as i64);
            let claimed = documents
                .find_one_and_update(
                    doc! {
                        "_id": id,
                        format!("{PENDING}.0"): { "$exists": true },
                        "$or": [ { LEASE: { "$exists": false } }, { LEASE: null }, { LEASE: { "$lt": now } } ],
                    },
                    doc! { "$set": { LEASE: until } },
                )
                .projection(doc! { PENDING: 1 })
                .return_document(ReturnDocument::After)
                .await;
            let claimed = match claimed {
                Ok(Some(doc)) => doc,
                // Nothing pending, or another relay has it.
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(collection, id, "cannot claim pending events: {e}");
                    return;
                }
            };
            let events = claimed.get_array(PENDING).cloned().unwrap_or_default();
            let mut published: Vec<String> = Vec::new();
            let claimed_events: Vec<&Document> = events.iter().filter_map(Bson::as_document).take(EVENTS_PER_CLAIM).collect();
            for event in claimed_events.iter().copied() {
                let Some(event_id) = event.get_str("id").ok() else { continue };
                match self.publish(event).await {
                    Ok(()) => published.push(event_id.to_string()),
                    Err(e) => {
                        tracing::warn!(collection, id, event = event_id, "event not published yet, will retry: {e:#}");
                        break;
                    }
                }
            }
            let all = published.len() == claimed_events.len();
            // Only this claim is released: after a stall past the lease,
            // another relay's claim stays.
            let released = documents
                .update_one(
                    doc! { "_id": id, LEASE: until },
                    doc! { "$pull": { PENDING: { "id": { "$in": &published } } }, "$unset": { LEASE: "" } },
                )
                .await;
            if let Err(e) = released {
                // Published again after the lease: the consumers' journal
                // answers the duplicates.
                tracing::warn!(collection, id, "published events not marked as such: {e}");
                return;
            }
            if !all || published.is_empty() {
                return;
            }
        }
    }

    async fn publish(&self, event: &Document) -> anyhow::Result<()> {
        let bytes = |field: &str| match event.get(field) {
            Some(Bson::Binary(b)) => Some(b.bytes.clone()),
            _ => None,
        };
        let topic = event.get_str("topic")?;
        let id = event.get_str("id")?;
        let key = bytes("key");
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        for header in event.get_array("headers").map(|a| a.as_slice()).unwrap_or_default() {
            if let Some(h) = header.as_document()
                && let (Ok(k), Some(Bson::Binary(v))) = (h.get_str("k"), h.get("v"))
            {
                headers.push((k, v.bytes.clone()));
            }
        }
        headers.push((RecordKey::EVENT_ID_HEADER, id.as_bytes().to_vec()));
        self.producer
            .publish(Event { topic, key: key.as_deref(), payload: bytes("payload").unwrap_or_default(), headers })
            .await
    }
}
