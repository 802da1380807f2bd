//! The journal: what a function's capability calls did while it handled a
//! record, kept in the database so that the same record delivered again
//! (after a crash, a rebalance, a retry, a replay, or a duplicate event) gets
//! the same answers without the calls being done again.
//!
//! Every call a capability journals gets a sequence number within the
//! record's handling: the first call is 0, the next 1, and so on. Before a
//! call runs, its entry is looked up by the record's key and that number;
//! when there is one for the same call (`mail.send`, `documents.insert-one`,
//! …), its result is returned and nothing is done. Otherwise the call runs
//! and its result is written. So a second delivery takes the path the first
//! took, whatever the function's code does, as long as it makes the same
//! calls in the same order; a call that differs (another version deployed
//! meanwhile) runs for real.
//!
//! The window that remains: the effect happened (SMTP accepted, the update
//! applied), then the host died before the entry was written. That record's
//! next delivery does the call again. Inserts close that window themselves
//! (their generated id is derived from the call, so a second insert meets a
//! duplicate key and is recognized as done); mail carries a `Message-ID`
//! derived from the call, so that a receiver can drop the duplicate.
//!
//! A read (the clock, a find) is written together with the next effect's
//! entry, which may depend on it; reads after the last effect are not
//! written at all, so the next try of a record not handled (retry-later, a
//! trap) reads afresh (the clock, a document it waits for), while the reads
//! an effect depended on stay.
//!
//! A record's entries live in one document (`_id`: function and record),
//! read once per handling (at its first journaled call, by `_id`) and
//! written once per call. The read is skipped for the first handling of a
//! record that no one can have started before: each partition has a mark,
//! raised in steps before a record past it starts, below which records may
//! have a journal; a worker reads it when it gets the partition.
//!
//! A record's document expires (a TTL index on `expireAt`) a week after it
//! was last written or tried, so that later tries and replays from the
//! dead-letter topic find it; once the record is handled, an hour from then
//! (long enough for a duplicate of its event to be answered from it).

use std::{
    future::Future,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, DateTime, Document, doc},
    options::IndexOptions,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, mpsc};

use super::{runtime::sha256_hex, trace::TraceContext};

/// The collection the journal lives in.
pub const COLLECTION: &str = "runnel_journal";
/// How far a partition's mark is raised at a time at first (see
/// [`Journal::mark`]); the step doubles while raises come less than
/// [`MARK_RAISES_APART`] apart, up to [`MAX_MARK_STEP`], and halves back
/// when they come more than ten times that apart.
pub const MARK_STEP: i64 = 1000;
/// The largest step: how many records past its last commit a partition's
/// next owner reads the journal of, at most.
pub const MAX_MARK_STEP: i64 = 32 * MARK_STEP;
/// How often a busy partition's mark is written, at most, once its step has grown.
pub const MARK_RAISES_APART: Duration = Duration::from_secs(1);
/// How long a handled record's entries are kept: long enough for a
/// duplicate of its event to arrive and be answered from them.
const KEPT_HANDLED: Duration = Duration::from_secs(60 * 60);
/// Handled records' documents are marked in batches of at most this many…
const HANDLED_BATCH: usize = 256;
/// …or after this long.
const HANDLED_FLUSH: Duration = Duration::from_millis(500);
/// How long the entries of a record not handled yet (in flight, retried,
/// dead-lettered) are kept: for its next tries, and for a replay.
pub const KEPT_DEAD_LETTERED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The journal of every function on this host, and a task that marks the
/// documents of handled records to expire sooner, in batches.
///
/// Cheap to clone: one reference count (each record's [`Calls`] holds one).
#[derive(Clone)]
pub struct Journal(Arc<JournalInner>);

struct JournalInner {
    entries: Collection<Document>,
    handled: mpsc::UnboundedSender<String>,
    /// Handled records whose documents wait to be marked.
    backlog: Arc<std::sync::atomic::AtomicI64>,
    /// Bound on every journal read or write.
    timeout: Duration,
}

/// The journal could not be read or written in time.
#[derive(Debug, thiserror::Error)]
#[error("the journal is unavailable: {0}")]
pub struct JournalUnavailable(String);

impl Journal {
    /// Creates the collection's index and starts the task that marks handled
    /// records. Must be called within a tokio runtime.
    pub async fn open(database: &Database, timeout: Duration) -> anyhow::Result<Self> {
        let entries = database.collection::<Document>(COLLECTION);
        // One document per record, found by its `_id`: the only other
        // index is the one that expires them.
        let expiry = IndexModel::builder()
            .keys(doc! { "expireAt": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        entries.create_index(expiry).await?;
        let (handled, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(std::sync::atomic::AtomicI64::new(0));
        tokio::spawn(expire_handled(entries.clone(), rx, backlog.clone()));
        Ok(Journal(Arc::new(JournalInner { entries, handled, backlog, timeout })))
    }

    /// Handled records whose journal documents wait to be marked to expire
    /// sooner (they are written in batches; a slow database makes it grow).
    pub fn backlog(&self) -> i64 {
        self.0.backlog.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The journal of handling `record` (its key, see [`RecordKey`]) by
    /// `function`.
    ///
    /// `past_the_mark`: the record is past every earlier owner's mark of its
    /// partition (see [`Journal::mark`]), so no call of it was journaled at
    /// its coordinates. Unless it is keyed by an event id, which another
    /// delivery of the event may have journaled, its first call then reads
    /// no journal.
    ///
    /// `trace`: the trace of a call that runs in no one record's trace (a
    /// record of a batch): the record's effects carry it (a mail's
    /// `Traceparent`) and its function's log lines name it.
    pub fn calls(&self, function: Arc<str>, record: RecordKey, past_the_mark: bool, trace: Option<TraceContext>) -> Calls {
        let known_new = past_the_mark && record.event.is_none();
        Calls::new(Some(self.clone()), function, Some(record), known_new, trace)
    }

    fn mark_id(function: &str, topic: &str, partition: i32) -> String {
        format!("{function}\u{1f}{topic}/{partition}\u{1f}started-below")
    }

    /// With the dead letter's timestamp, when it has one (as a record's
    /// key, see [`RecordKey::id`]: a dead-letter topic made anew numbers
    /// its dead letters from 0 again).
    fn replayed_id(function: &str, partition: i32, offset: i64, at: Option<i64>) -> String {
        match at {
            Some(at) => format!("{function}\u{1f}dead-letter/{partition}/{offset}@{at}\u{1f}replayed"),
            None => format!("{function}\u{1f}dead-letter/{partition}/{offset}\u{1f}replayed"),
        }
    }

    /// Whether the dead letter at `partition`/`offset` (with the timestamp
    /// `at`) of `function`'s dead-letter topic was replayed and handled before.
    pub async fn replayed_before(&self, function: &str, partition: i32, offset: i64, at: Option<i64>) -> Result<bool, JournalUnavailable> {
        let find = self.0.entries.find_one(doc! { "_id": Self::replayed_id(function, partition, offset, at) });
        Ok(bounded(self.0.timeout, find.into_future()).await?.is_some())
    }

    /// Remembers that the dead letter at `partition`/`offset` (with the
    /// timestamp `at`) was replayed and handled (for as long as unhandled
    /// records' journals are kept).
    pub async fn mark_replayed(&self, function: &str, partition: i32, offset: i64, at: Option<i64>) -> Result<(), JournalUnavailable> {
        let expire_at = DateTime::from_system_time(std::time::SystemTime::now() + KEPT_DEAD_LETTERED);
        let mark = self
            .0
            .entries
            .update_one(
                doc! { "_id": Self::replayed_id(function, partition, offset, at) },
                doc! { "$set": { "function": function, "replayedAt": DateTime::now(), "expireAt": expire_at } },
            )
            .upsert(true);
        bounded(self.0.timeout, mark.into_future()).await.map(drop)
    }

    /// The offset of `topic`/`partition` from which `function` never
    /// started a record: records from there on have no journal, and their
    /// first handling need not read it. Raised (with [`Journal::raise_mark`])
    /// before a record past it is started, in steps, so that it costs one
    /// write per step of records (see [`MARK_STEP`]).
    pub async fn mark(&self, function: &str, topic: &str, partition: i32) -> Result<i64, JournalUnavailable> {
        let find = self.0.entries.find_one(doc! { "_id": Self::mark_id(function, topic, partition) });
        let found = bounded(self.0.timeout, find.into_future()).await?;
        Ok(found.and_then(|d| d.get_i64("below").ok()).unwrap_or(0))
    }

    /// Raises the mark of `topic`/`partition` to at least `below`.
    pub async fn raise_mark(&self, function: &str, topic: &str, partition: i32, below: i64) -> Result<(), JournalUnavailable> {
        let raise = self
            .0
            .entries
            .update_one(doc! { "_id": Self::mark_id(function, topic, partition) }, doc! { "$max": { "below": below } })
            .upsert(true);
        bounded(self.0.timeout, raise.into_future()).await.map(drop)
    }

    /// The mark of `topic`/`partition` as the worker that owns the
    /// partition sees it.
    pub fn partition_mark(&self, function: &str, topic: &str, partition: i32) -> PartitionMark {
        PartitionMark {
            journal: self.clone(),
            function: function.into(),
            topic: topic.into(),
            partition,
            reread_below: None,
            raised: None,
            ahead: None,
            step: MARK_STEP,
            last_raise: None,
            raises: 0,
        }
    }

    /// The `_id` of the journal document of `record` handled by `function`.
    fn id(function: &str, record: &str) -> String {
        format!("{function}\u{1f}{record}")
    }

    async fn load(&self, function: &str, record: &str) -> Result<Vec<Entry>, JournalUnavailable> {
        let find = self.0.entries.find_one(doc! { "_id": Self::id(function, record) }).projection(doc! { "calls": 1 });
        let Some(found) = bounded(self.0.timeout, find.into_future()).await? else { return Ok(Vec::new()) };
        let Ok(calls) = found.get_document("calls") else { return Ok(Vec::new()) };
        let mut entries: Vec<Entry> = calls
            .iter()
            .filter_map(|(seq, entry)| {
                let entry = entry.as_document()?;
                Some(Entry {
                    seq: seq.parse().ok()?,
                    effect: entry.get_bool("effect").unwrap_or(true),
                    call: entry.get_str("call").ok()?.to_string(),
                    args: entry.get_str("args").ok()?.to_string(),
                    result: entry.get("result")?.clone(),
                })
            })
            .collect();
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    /// Writes `entry` into the record's document: made by its first entry
    /// (`first`: the record has no document yet, so a plain insert), an
    /// entry of a call that differed is overwritten.
    async fn write(&self, function: &str, record: &RecordKey, entries: &[Entry], first: bool) -> Result<(), JournalUnavailable> {
        // Kept as long as an unhandled record's: shortened once it is handled.
        let expire_at = DateTime::from_system_time(std::time::SystemTime::now() + KEPT_DEAD_LETTERED);
        let calls: Vec<(String, Document)> = entries
            .iter()
            .map(|entry| {
                let call = doc! {
                    "call": &entry.call,
                    "effect": entry.effect,
                    "args": &entry.args,
                    "result": entry.result.clone(),
                    "at": DateTime::now(),
                };
                (entry.seq.to_string(), call)
            })
            .collect();
        let id = Self::id(function, record.id());
        if first {
            let document = doc! {
                "_id": &id,
                "function": function,
                "record": record.id(),
                "topic": &*record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "calls": calls.iter().cloned().map(|(seq, call)| (seq, Bson::Document(call))).collect::<Document>(),
                "expireAt": expire_at,
            };
            match bounded(self.0.timeout, self.0.entries.insert_one(document).into_future()).await {
                Ok(_) => return Ok(()),
                // Someone wrote it meanwhile: update it below.
                Err(JournalUnavailable(e)) if e.contains("E11000") => {}
                Err(e) => return Err(e),
            }
        }
        let mut set: Document = calls.into_iter().map(|(seq, call)| (format!("calls.{seq}"), Bson::Document(call))).collect();
        set.insert("expireAt", expire_at);
        let update = doc! {
            "$set": set,
            "$setOnInsert": {
                "function": function,
                "record": record.id(),
                "topic": &*record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        };
        let write = self.0.entries.update_one(doc! { "_id": id }, update).upsert(true);
        bounded(self.0.timeout, write.into_future()).await.map(drop)
    }

    /// After a try that did not handle the record: removes the entries
    /// `forget` and keeps the rest for `keep` from now.
    async fn unhandled(&self, function: &str, record: &str, forget: &[u32], keep: Duration) -> Result<(), JournalUnavailable> {
        let expire_at = DateTime::from_system_time(std::time::SystemTime::now() + keep);
        let mut update = doc! { "$set": { "expireAt": expire_at } };
        if !forget.is_empty() {
            let unset: Document = forget.iter().map(|seq| (format!("calls.{seq}"), Bson::String(String::new()))).collect();
            update.insert("$unset", unset);
        }
        let write = self.0.entries.update_one(doc! { "_id": Self::id(function, record) }, update);
        bounded(self.0.timeout, write.into_future()).await.map(drop)
    }

}

async fn bounded<T>(
    timeout: Duration,
    op: impl Future<Output = mongodb::error::Result<T>>,
) -> Result<T, JournalUnavailable> {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(JournalUnavailable(e.to_string())),
        Err(_) => Err(JournalUnavailable(format!("no answer within {timeout:?}"))),
    }
}

/// Marks the documents of handled records to expire [`KEPT_HANDLED`] from
/// now, in batches; one that is not marked (the host stopped first) expires
/// with the longer retention.
async fn expire_handled(
    entries: Collection<Document>,
    mut rx: mpsc::UnboundedReceiver<String>,
    backlog: Arc<std::sync::atomic::AtomicI64>,
) {
    let mut batch: Vec<String> = Vec::new();
    loop {
        let next = if batch.is_empty() {
            match rx.recv().await {
                Some(id) => Some(id),
                None => return,
            }
        } else {
            tokio::time::timeout(HANDLED_FLUSH, rx.recv()).await.unwrap_or(None)
        };
        if let Some(id) = next {
            batch.push(id);
            if batch.len() < HANDLED_BATCH {
                continue;
            }
        }
        let expire_at = DateTime::from_system_time(std::time::SystemTime::now() + KEPT_HANDLED);
        let ids: Vec<String> = std::mem::take(&mut batch);
        let marked = ids.len() as i64;
        if let Err(e) = entries.update_many(doc! { "_id": { "$in": ids } }, doc! { "$set": { "expireAt": expire_at } }).await {
            tracing::warn!("journal documents of handled records not marked (they expire later): {e}");
        }
        backlog.fetch_sub(marked, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One partition's journal mark, as the worker that owns the partition
/// sees it: read when the worker starts, then raised a step at a time, the
/// next raise written in the background once the records are half way to
/// it, so that in a steady flow no record waits for it. The step grows
/// with the flow (see [`MARK_STEP`]): a partition taking 100,000 records a
/// second writes its mark a few times a second, not a hundred.
pub struct PartitionMark {
    journal: Journal,
    function: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    /// Below this offset, a record may have been started by an earlier
    /// owner of the partition: its journal is read.
    reread_below: Option<i64>,
    /// How far this worker raised the mark.
    raised: Option<i64>,
    /// The next raise, and its write.
    ahead: Option<(i64, tokio::task::JoinHandle<Result<(), JournalUnavailable>>)>,
    /// How far the next raise goes past the last.
    step: i64,
    /// When the last raise was sent.
    last_raise: Option<std::time::Instant>,
    /// Raises sent, written or not.
    raises: u64,
}

impl PartitionMark {
    /// Makes sure the mark is past `offset` (a record past the mark never
    /// starts before a raise covering it is written) and says whether the
    /// record is new: below no earlier owner's mark, so without a journal.
    pub async fn ensure(&mut self, offset: i64) -> Result<bool, JournalUnavailable> {
        // Most records: below the mark raised, with the next raise under
        // way or not due yet; nothing to do.
        if let (Some(below), Some(raised)) = (self.reread_below, self.raised)
            && offset < raised
            && (self.ahead.is_some() || offset < raised - self.step / 2)
        {
            return Ok(offset >= below);
        }
        let below = match self.reread_below {
            Some(below) => below,
            None => *self.reread_below.insert(self.journal.mark(&self.function, &self.topic, self.partition).await?),
        };
        let raised = *self.raised.get_or_insert(below);
        if offset >= raised {
            // The raise ahead, if it covers this record and was written.
            let ahead = match self.ahead.take() {
                Some((to, raise)) if to > offset => raise.await.ok().and_then(Result::ok).map(|()| to),
                Some((_, raise)) => {
                    raise.abort();
                    None
                }
                None => None,
            };
            let to = match ahead {
                Some(to) => to,
                None => {
                    let to = offset + self.next_step();
                    self.journal.raise_mark(&self.function, &self.topic, self.partition, to).await?;
                    to
                }
            };
            self.raised = Some(to);
        }
        if let Some(raised) = self.raised
            && self.ahead.is_none()
            && offset >= raised - self.step / 2
        {
            let (journal, function, topic, partition) = (self.journal.clone(), self.function.clone(), self.topic.clone(), self.partition);
            let to = raised + self.next_step();
            let raise = tokio::spawn(async move { journal.raise_mark(&function, &topic, partition, to).await });
            self.ahead = Some((to, raise));
        }
        Ok(offset >= below)
    }

    /// The step of a raise sent now, adapted to how long ago the last one was.
    fn next_step(&mut self) -> i64 {
        let now = std::time::Instant::now();
        if let Some(last) = self.last_raise {
            let apart = now.duration_since(last);
            if apart < MARK_RAISES_APART {
                self.step = (self.step * 2).min(MAX_MARK_STEP);
            } else if apart > MARK_RAISES_APART * 10 {
                self.step = (self.step / 2).max(MARK_STEP);
            }
        }
        self.last_raise = Some(now);
        self.raises += 1;
        self.step
    }

    /// The offset this worker has raised the mark to, once it has.
    pub fn raised(&self) -> Option<i64> {
        self.raised
    }

    /// How many raises this worker has sent.
    pub fn raises(&self) -> u64 {
        self.raises
    }
}

impl Drop for PartitionMark {
    fn drop(&mut self) {
        // Harmless if it went on (a higher mark only makes the next owner
        // read more journals), but nobody needs it any more.
        if let Some((_, raise)) = self.ahead.take() {
            raise.abort();
        }
    }
}

/// Which record a function is handling, as the journal knows it. Cheap to
/// make and to clone: its id is only written out once a journal needs it
/// (most records call no capability and never do).
#[derive(Debug, Clone)]
pub struct RecordKey {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The event id the producer gave the record (`runnel-event-id`).
    event: Option<Arc<str>>,
    /// The record's timestamp, when it has one.
    timestamp_ms: Option<i64>,
    id: OnceLock<Arc<str>>,
}

impl RecordKey {
    /// The header that names an event, whoever published it twice.
    pub const EVENT_ID_HEADER: &'static str = "runnel-event-id";

    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64, event_id: Option<&str>) -> Self {
        let event = event_id.filter(|event| !event.is_empty()).map(Arc::from);
        RecordKey { topic: topic.into(), partition, offset, event, timestamp_ms: None, id: OnceLock::new() }
    }

    /// The key of a record with the timestamp `timestamp_ms` (the one its
    /// log holds, so the same at every delivery).
    pub fn at(mut self, timestamp_ms: Option<i64>) -> Self {
        self.timestamp_ms = timestamp_ms;
        self.id = OnceLock::new();
        self
    }

    /// The record's identity: the event id the producer gave it, so that a
    /// duplicate of an event is the same record; otherwise its topic,
    /// partition, offset and timestamp. An offset alone names a record only
    /// for its topic's life: a topic deleted and made again (or a broker
    /// that kept its topics in memory, started again) numbers its records
    /// from 0 again, and a new record must not be answered from the journal
    /// of the old one at its offset.
    pub fn id(&self) -> &str {
        self.id.get_or_init(|| match (&self.event, self.timestamp_ms) {
            (Some(event), _) => format!("event:{event}").into(),
            (None, Some(at)) => format!("{}/{}/{}@{at}", self.topic, self.partition, self.offset).into(),
            (None, None) => format!("{}/{}/{}", self.topic, self.partition, self.offset).into(),
        })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u32,
    /// Whether the call changed something (a write, a mail), or only read.
    effect: bool,
    call: String,
    /// The SHA-256 of the call's arguments: a replayed call whose arguments
    /// differ is logged.
    args: String,
    result: Bson,
}

/// The journal of one handling of one record, shared by the capabilities of
/// its instance. Cheap to clone: one reference count (a record's calls are
/// cloned into each capability of the instance that handles it).
#[derive(Clone)]
pub struct Calls(Arc<CallsShared>);

struct CallsShared {
    inner: Mutex<CallsInner>,
    /// Set before anything changes `inner` (a call, a service noted
    /// unavailable): until then its stats are the default and there is
    /// nothing to mark handled, which most records (calling no capability)
    /// answer without the lock.
    touched: AtomicBool,
    journal: Option<Journal>,
    function: Arc<str>,
    record: Option<RecordKey>,
    /// The record's trace, when it is not the one the call runs in (a
    /// record of a batch, whose call runs in no one record's trace).
    trace: Option<TraceContext>,
}

struct CallsInner {
    /// Entries of earlier deliveries; read at the first journaled call.
    loaded: Option<Vec<Entry>>,
    next_seq: u32,
    /// The last call with an effect, journaled now or before.
    last_effect: Option<u32>,
    /// The calls journaled by this handling.
    written: Vec<u32>,
    /// Reads not written yet: they go with the next effect's entry.
    pending_reads: Vec<Entry>,
    stats: CallStats,
}

/// What happened to the journaled calls of one handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls answered from the journal.
    pub replayed: u32,
    /// Calls done and journaled.
    pub journaled: u32,
    /// Whether a capability answered `unavailable` (or could not be
    /// journaled): the function's retry then waits for a service, and is
    /// not held against it.
    pub unavailable: bool,
}

impl Calls {
    /// `known_new`: the record has no journal yet, so none is read.
    fn new(journal: Option<Journal>, function: Arc<str>, record: Option<RecordKey>, known_new: bool, trace: Option<TraceContext>) -> Self {
        let journal = if record.is_some() { journal } else { None };
        Calls(Arc::new(CallsShared {
            inner: Mutex::new(CallsInner {
                loaded: known_new.then(Vec::new),
                next_seq: 0,
                last_effect: None,
                written: Vec::new(),
                pending_reads: Vec::new(),
                stats: CallStats::default(),
            }),
            touched: AtomicBool::new(false),
            journal,
            function,
            record,
            trace,
        }))
    }

    /// The record's trace, when [`Journal::calls`] was given one.
    pub fn trace(&self) -> Option<TraceContext> {
        self.0.trace
    }

    /// Calls that are not journaled: for running a function by hand
    /// (`runnel invoke`, tests), where no record is delivered twice.
    pub fn unjournaled(function: Arc<str>) -> Self {
        Calls::new(None, function, None, false, None)
    }

    /// The record's key, when journaled.
    pub fn record(&self) -> Option<&RecordKey> {
        self.0.record.as_ref()
    }

    pub async fn stats(&self) -> CallStats {
        if !self.0.touched.load(Ordering::Acquire) {
            return CallStats::default();
        }
        self.0.inner.lock().await.stats
    }

    /// Notes that a service did not answer, without a journaled call.
    pub async fn note_unavailable(&self) {
        self.0.touched.store(true, Ordering::Release);
        self.0.inner.lock().await.stats.unavailable = true;
    }

    /// After a try that ended without the record handled (retry-later, a
    /// trap, a dead letter): forgets the reads journaled after the last
    /// effect, so that the next try reads afresh (the clock, documents that
    /// may have changed) while the reads an effect depended on stay, and
    /// keeps the record's entries for `keep` from now (the record may be
    /// tried again, or replayed, long after they were written).
    pub async fn unhandled(&self, keep: Duration) {
        let mut inner = self.0.inner.lock().await;
        let (Some(journal), Some(record)) = (self.0.journal.clone(), self.0.record.as_ref()) else { return };
        let loaded = inner.loaded.clone().unwrap_or_default();
        let has_entries = !inner.written.is_empty() || !loaded.is_empty();
        if !has_entries {
            return;
        }
        // The last effect of any try, reached by this one or not; only reads
        // after it are forgotten, never an effect.
        let last_effect = loaded.iter().filter(|e| e.effect).map(|e| e.seq).chain(inner.last_effect).max();
        let after = |seq: u32| last_effect.is_none_or(|last| seq > last);
        let forget: Vec<u32> = loaded.iter().filter(|e| !e.effect && after(e.seq)).map(|e| e.seq).collect();
        if let Err(e) = journal.unhandled(&self.0.function, record.id(), &forget, keep).await {
            tracing::warn!(function = %self.0.function, record = %record.id(), "journal of an unhandled try not updated: {e}");
        }
        inner.pending_reads.clear();
    }

    /// Marks the record as handled: its journal expires an hour from now
    /// (soon after, in a batch). Answers its [`Calls::stats`].
    pub async fn handled(&self) -> CallStats {
        if !self.0.touched.load(Ordering::Acquire) {
            return CallStats::default();
        }
        let inner = self.0.inner.lock().await;
        let stats = inner.stats;
        let (Some(journal), Some(record)) = (&self.0.journal, self.0.record.as_ref()) else { return stats };
        if inner.written.is_empty() && inner.loaded.as_ref().is_none_or(Vec::is_empty) {
            return stats;
        }
        // Counted before it is sent, so that the marking task never counts it off first.
        journal.0.backlog.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if journal.0.handled.send(Journal::id(&self.0.function, record.id())).is_err() {
            journal.0.backlog.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }

    /// Runs the call `call` with `args`, or answers it from the journal.
    /// `effect`: whether the call changes something (else it only reads).
    ///
    /// `live` gets the call's id (stable across deliveries of this record:
    /// for Message-IDs and generated document ids) and does the call.
    /// Results for which `keep` is false (a service that was unavailable)
    /// are not journaled, so the next delivery tries again. When the journal
    /// cannot be read, the call is not done and `Err` says why.
    pub async fn run<T, F, Fut>(
        &self,
        call: &'static str,
        effect: bool,
        args: &impl Serialize,
        keep: fn(&T) -> bool,
        live: F,
    ) -> Result<T, JournalUnavailable>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(CallId) -> Fut,
        Fut: Future<Output = T>,
    {
        self.0.touched.store(true, Ordering::Release);
        let mut inner = self.0.inner.lock().await;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let call_id = CallId::new(&self.0.function, self.0.record.as_ref(), seq);
        let (Some(journal), Some(record)) = (self.0.journal.clone(), self.0.record.as_ref()) else {
            return Ok(live(call_id).await);
        };
        let args = sha256_hex(&[&serde_json::to_vec(args).unwrap_or_default()]);

        if inner.loaded.is_none() {
            match journal.load(&self.0.function, record.id()).await {
                Ok(entries) => inner.loaded = Some(entries),
                Err(e) => {
                    inner.stats.unavailable = true;
                    return Err(e);
                }
            }
        }
        let earlier = inner.loaded.as_ref().and_then(|entries| entries.iter().find(|e| e.seq == seq)).cloned();
        if let Some(entry) = earlier {
            if entry.call == call {
                match bson::from_bson::<T>(entry.result.clone()) {
                    Ok(result) => {
                        if entry.args != args {
                            tracing::info!(
                                function = %self.0.function, record = %record.id(), seq, call,
                                "answered from the journal although the arguments differ from the first delivery's"
                            );
                        }
                        inner.stats.replayed += 1;
                        if entry.effect {
                            inner.last_effect = Some(seq);
                        }
                        return Ok(result);
                    }
                    Err(e) => tracing::warn!(
                        function = %self.0.function, record = %record.id(), seq, call,
                        "journal entry unreadable, doing the call again: {e}"
                    ),
                }
            } else {
                tracing::warn!(
                    function = %self.0.function, record = %record.id(), seq, call, journaled = %entry.call,
                    "the function makes other calls than on an earlier delivery (another version?): doing this one"
                );
            }
        }

        let result = live(call_id).await;
        if keep(&result) {
            let entry = match bson::to_bson(&result) {
                Ok(result) => Some(Entry { seq, effect, call: call.to_string(), args, result }),
                Err(e) => {
                    tracing::warn!(function = %self.0.function, call, "result not journaled: {e}");
                    None
                }
            };
            if let Some(entry) = entry {
                if !effect {
                    // A read is written with the next effect, which may
                    // depend on it; without one, nothing needs it again.
                    inner.pending_reads.push(entry);
                    return Ok(result);
                }
                let first = inner.written.is_empty() && inner.loaded.as_ref().is_some_and(Vec::is_empty);
                let mut entries = std::mem::take(&mut inner.pending_reads);
                entries.push(entry);
                match journal.write(&self.0.function, record, &entries, first).await {
                    Ok(()) => {
                        inner.stats.journaled += entries.len() as u32;
                        inner.written.extend(entries.iter().map(|e| e.seq));
                        inner.last_effect = Some(seq);
                    }
                    // The effect happened: answer it. A redelivery of this
                    // record would do the call again (the documented window).
                    Err(e) => tracing::warn!(
                        function = %self.0.function, record = %record.id(), seq, call,
                        "call done but not journaled (a redelivery would repeat it): {e}"
                    ),
                }
            }
        } else {
            inner.stats.unavailable = true;
        }
        Ok(result)
    }
}

/// A call's identity, the same on every delivery of its record.
#[derive(Debug, Clone)]
pub struct CallId {
    digest: Option<String>,
}

impl CallId {
    fn new(function: &str, record: Option<&RecordKey>, seq: u32) -> Self {
        CallId {
            digest: record.map(|r| sha256_hex(&[function.as_bytes(), b"\x1f", r.id().as_bytes(), b"\x1f", &seq.to_be_bytes()])),
        }
    }

    /// 32 hex digits that identify the call, when it belongs to a record.
    pub fn hex(&self) -> Option<&str> {
        self.digest.as_deref().map(|d| &d[..32])
    }

    /// A UUID derived from the call (random when the call belongs to no
    /// record): ids generated for a record are the same on every delivery.
    pub fn uuid(&self) -> uuid::Uuid {
        match self.hex().and_then(|h| u128::from_str_radix(h, 16).ok()) {
            Some(n) => uuid::Uuid::new_v8(n.to_be_bytes()),
            None => uuid::Uuid::new_v4(),
        }
    }
}
