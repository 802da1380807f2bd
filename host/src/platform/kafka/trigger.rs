//! The Kafka trigger of one deployment: a consumer in the function's group,
//! and one worker task per assigned partition that feeds the function that
//! partition's records and stores an offset only once the function is done
//! with that record and every one before it.
//!
//! A worker runs up to the manifest's `max-in-flight` records at once, each
//! in a task of its own: records of different keys overlap, records of one
//! key run one after the other in their order (records without a key are
//! not ordered among each other). With the default of 1, a partition runs
//! in its order.
//!
//! Each assigned partition has a librdkafka queue of its own (split off the
//! consumer's queue before the partition is assigned), read only by that
//! partition's worker, and only while the worker has room: a worker that
//! falls behind (a slow record, a retry waiting out its back-off) simply
//! stops reading, and librdkafka stops fetching that partition once its
//! queue holds [`QUEUED_MIN_MESSAGES`] records or [`QUEUED_MAX_KBYTES`]
//! (looking again every [`FETCH_QUEUE_BACKOFF_MS`]); the other partitions
//! keep flowing. Nothing is paused, so nothing fetched is thrown away and
//! fetched again. The consumer loop itself only serves the consumer's
//! events (rebalances, commits, statistics), so the consumer keeps its
//! group membership however long a record takes. Stored offsets are
//! committed in batches (every [`COMMIT_INTERVAL`]), when partitions are
//! revoked, and when the trigger stops.
//!
//! On a rebalance, a revoked partition's worker stops reading its queue and
//! finishes the calls in flight (the revocation waits for them, up to the
//! call deadline), then its offsets are committed and the partition is
//! handed over; records it had taken and not started, and those left in
//! its queue, are dropped, to be delivered to the new owner. So a record is
//! never run by two hosts at the same time, and the journal (see
//! [`crate::platform::journal`]) answers a redelivered record's calls.
//!
//! The function each worker runs is read from a `watch` channel before every
//! record, so a new version is swapped in between two records.
//!
//! What happens to a record depends on how the function answered:
//! - handled: its offset is stored;
//! - filtered out by the manifest's `[trigger.kafka.filter]`: stored,
//!   without running the function;
//! - bad input: copied to `<topic>.dlq` (headers say why), then stored;
//! - retry later: run again after a back-off with jitter, on the newest
//!   version, within the manifest's retry budget (`[trigger.kafka.retry]`);
//!   retries while a capability was unavailable wait for the service and are
//!   not counted;
//! - trap or timeout: retried up to the budget's `failures`;
//! - a spent budget dead-letters the record (with `runnel-attempts`);
//! - give up, or no instance can be made: the trigger stops without storing
//!   the record, which is the first one seen once another version is
//!   deployed (a version deployed while that call ran gets it at once).
//!
//! A dead-letter write that fails is retried (with back-off) on its own: the
//! function is not run again for it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{
        Arc, Condvar, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::{Duration, Instant, SystemTime},
};

use rdkafka::{
    ClientContext, Message as _, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, Rebalance, StreamConsumer, stream_consumer::StreamPartitionQueue},
    error::KafkaError,
    message::{BorrowedMessage, Headers},
    types::RDKafkaErrorCode,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{Cluster, Event, EventProducer, dead_letter_topic};
use crate::platform::{
    deployments::{Deployment, FunctionState, Status},
    journal::{Journal, KEPT_DEAD_LETTERED, PartitionMark, RecordKey},
    metrics::{Metrics, VersionMetrics},
    runtime::{HandlerError, Header, Message, Outcome},
    trace::{self, TraceContext},
};
use futures::{FutureExt as _, StreamExt as _};
use tracing::Instrument;

/// How often librdkafka reports the consumer's statistics (its lag).
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How often stored offsets are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// How long the consumer is not polled after it reported an error; the
/// trigger's other work (ticks, assignments, stopping) goes on meanwhile.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// Records a partition's worker has taken and not started yet; past this,
/// it stops reading its partition's queue until one starts.
const QUEUED_PER_PARTITION: usize = 64;
/// What librdkafka keeps fetched ahead of each partition's worker (its
/// `queued.min.messages` and `queued.max.messages.kbytes`, which apply per
/// partition with split queues): past either, it stops fetching the
/// partition and looks again after `fetch.queue.backoff.ms`. Short, so a
/// worker catching up never waits for the fetch after the one it skipped.
const QUEUED_MIN_MESSAGES: &str = "10000";
const QUEUED_MAX_KBYTES: &str = "2048";
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// The longest wait between two tries while a service is unavailable: the
/// record goes on soon after the service is back.
const MAX_OUTAGE_BACKOFF: Duration = Duration::from_secs(5);
/// How often a worker waiting between two tries looks for a revocation.
const REVOCATION_CHECK: Duration = Duration::from_millis(100);
/// How often a worker looks whether its partition's queue gave it nothing
/// since its last look, and if so reads the queue itself: a record waits at
/// most twice this for a wake-up that did not come. librdkafka calls a queue's wake-up only when the
/// queue goes from empty to non-empty, and that edge can be missed
/// (rust-rdkafka #665; split queues have no fallback of their own, #840): a
/// worker would then sleep with records in its queue, for good, since no
/// edge comes while they are there.
const QUEUE_LOOK_AGAIN: Duration = Duration::from_millis(250);

/// Everything a trigger needs, handed over by the registry.
pub struct Trigger {
    pub topic: String,
    pub group: String,
    pub cluster: Cluster,
    pub producer: EventProducer,
    pub journal: Journal,
    pub metrics: Metrics,
    pub status: Arc<Status>,
    /// The version to run; replaced in place by a deploy.
    pub deployment: watch::Receiver<Arc<Deployment>>,
    /// Turns true when the trigger must stop.
    pub stop: watch::Receiver<bool>,
    /// How long a revocation waits for a call in flight.
    pub call_deadline: Duration,
}

/// One partition's worker, as the consumer's rebalance callback sees it.
#[derive(Default)]
struct WorkerFlags {
    flags: Mutex<Flags>,
    idle: Condvar,
    /// Told when the partition is revoked, so that a worker waiting for its
    /// queue stops reading it at once.
    revoked: tokio::sync::Notify,
    /// What the worker has taken and finished; its offset is stored by
    /// the consumer loop before each commit, and by a revocation.
    window: Mutex<Window>,
}

#[derive(Default)]
struct Flags {
    revoked: bool,
    /// Tries running now.
    busy: usize,
}

impl WorkerFlags {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a record, unless the partition was revoked.
    fn begin(&self) -> bool {
        let mut flags = self.lock();
        if flags.revoked {
            return false;
        }
        flags.busy += 1;
        true
    }

    fn end(&self) {
        let mut flags = self.lock();
        flags.busy = flags.busy.saturating_sub(1);
        // Only a revocation waits for the tries to end, and it marks the
        // partition revoked (under this lock) before it waits: a wake-up
        // is a system call, not worth making for every record.
        if flags.busy == 0 && flags.revoked {
            self.idle.notify_all();
        }
    }

    fn is_revoked(&self) -> bool {
        self.lock().revoked
    }

    /// Takes the partition away: no try of a record starts after this, and
    /// the worker reads no record from its queue after this (its select
    /// looks at this signal before the queue).
    fn revoke(&self) {
        self.lock().revoked = true;
        self.revoked.notify_one();
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the tries in flight (if any) have ended, up to
    /// `deadline`, once the partition is revoked (only then is the end of
    /// a try told). False when they did not end in time.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let flags = self.lock();
        let left = deadline.saturating_duration_since(Instant::now());
        let (flags, timeout) = self.idle.wait_timeout_while(flags, left, |f| f.busy > 0).unwrap_or_else(|e| e.into_inner());
        drop(flags);
        !timeout.timed_out()
    }
}

type Workers = Arc<Mutex<HashMap<i32, Arc<WorkerFlags>>>>;

/// Stores the offset each of `workers` finished since it was last stored
/// (librdkafka stores the one after it, the next to read); true when any
/// was. One store per partition and commit, not one per record.
fn store_finished<'a, C: Consumer<TriggerContext>>(
    consumer: &C,
    topic: &str,
    workers: impl IntoIterator<Item = (i32, &'a Arc<WorkerFlags>)>,
    function: &str,
) -> bool {
    let mut stored = false;
    for (partition, worker) in workers {
        let Some(offset) = worker.window().finished.take() else { continue };
        match consumer.store_offset(topic, partition, offset) {
            Ok(()) => stored = true,
            // librdkafka refuses offsets of partitions taken away.
            Err(e) => tracing::debug!(function, partition, "offset not stored (partition revoked?): {e}"),
        }
    }
    stored
}

/// Counts the consumer's rebalances (so that a swap or a long retry can be
/// shown to cause none), gives each assigned partition its worker and its
/// own queue, and hands revoked partitions over cleanly.
struct TriggerContext {
    topic: String,
    status: Arc<Status>,
    workers: Workers,
    call_deadline: Duration,
    /// Set when an asynchronous commit failed: the next tick commits again.
    commit_failed: Arc<AtomicBool>,
    /// The consumer this is the context of, to split partition queues off
    /// (weak: the consumer owns its context).
    consumer: OnceLock<Weak<TriggerConsumer>>,
    /// The partitions whose queue was split off already. librdkafka keeps
    /// a split queue split for the consumer's life (through revocations
    /// and assignments), and its handle must stay the only one: dropping
    /// a second handle would switch off the first one's wake-ups.
    split: Mutex<HashSet<i32>>,
    /// Where the partitions assigned go, for the consumer loop to start
    /// their workers.
    assigned: mpsc::UnboundedSender<Assigned>,
}

/// A partition assigned: its worker's flags (registered already, so that a
/// revocation coming before the worker starts finds them), and its queue
/// when it was split off just now.
struct Assigned {
    partition: i32,
    flags: Arc<WorkerFlags>,
    queue: Option<Arc<PartitionQueue>>,
}

impl TriggerContext {
    /// Splits the partitions' queues off (before librdkafka starts fetching
    /// them, so that no record of theirs ever comes on the consumer's own
    /// queue) and registers their workers.
    fn assign(&self, partitions: &TopicPartitionList) {
        let function = self.status.name();
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else { return };
        let mut split = self.split.lock().unwrap_or_else(|e| e.into_inner());
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for element in partitions.elements() {
            let partition = element.partition();
            // Still this consumer's (an incremental assignment of others).
            if element.topic() != self.topic || workers.contains_key(&partition) {
                continue;
            }
            let queue = if split.contains(&partition) {
                None
            } else {
                match consumer.split_partition_queue(&self.topic, partition) {
                    Some(queue) => {
                        split.insert(partition);
                        Some(Arc::new(queue))
                    }
                    None => {
                        // Its records come on the consumer's queue, where the
                        // loop takes them as a reason to start afresh.
                        tracing::error!(function, partition, "cannot give the partition a queue of its own");
                        continue;
                    }
                }
            };
            let flags = Arc::new(WorkerFlags::default());
            workers.insert(partition, flags.clone());
            let _ = self.assigned.send(Assigned { partition, flags, queue });
        }
    }

    /// Stops the revoked partitions' workers, waits for their tries in
    /// flight, and commits what they handled.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let revoked: Vec<(i32, Arc<WorkerFlags>)> = {
            let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            partitions.elements().iter().filter_map(|p| workers.remove(&p.partition()).map(|w| (p.partition(), w))).collect()
        };
        let function = self.status.name();
        // No try starts on any of them from now on, and no record is read
        // from their queues; then the tries in flight end, within one call
        // deadline for all.
        for (_, worker) in &revoked {
            worker.revoke();
        }
        let deadline = Instant::now() + self.call_deadline;
        let wait = || {
            for (_, worker) in &revoked {
                if !worker.wait_idle(deadline) {
                    tracing::warn!(function, "a call on a revoked partition did not end in time");
                }
            }
        };
        // Waiting blocks this thread: let the runtime move its other tasks
        // (the workers among them) elsewhere first.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
        store_finished(consumer, &self.topic, revoked.iter().map(|(p, w)| (*p, w)), function);
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(function, "commit on revocation failed (records may be seen again): {e}"),
        }
    }
}

impl ClientContext for TriggerContext {
    /// librdkafka's statistics (every [`STATISTICS_INTERVAL_MS`]): the lag
    /// of each partition this consumer owns, from the partition's end to
    /// the offset stored last (the first record not handled yet), or the
    /// committed one before anything was stored.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let owned: HashSet<i32> = self.workers.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let mut lag: Vec<(i32, i64)> = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| owned.contains(&p.partition))
            .filter_map(|p| [p.consumer_lag_stored, p.consumer_lag].into_iter().find(|lag| *lag >= 0).map(|lag| (p.partition, lag)))
            .collect();
        lag.sort_unstable();
        self.status.set_lag(lag);
    }
}

impl ConsumerContext for TriggerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => self.assign(partitions),
            Rebalance::Revoke(partitions) => self.revoke(consumer, partitions),
            Rebalance::Error(_) => {}
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(function = self.status.name(), "commit failed, will commit again: {e}");
                self.commit_failed.store(true, Ordering::Release);
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let function = self.status.name();
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.status.count_assignment();
                tracing::info!(function, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                self.status.count_revocation();
                tracing::info!(function, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(function, "rebalance error: {e}"),
        }
    }
}

type TriggerConsumer = StreamConsumer<TriggerContext>;
type PartitionQueue = StreamPartitionQueue<TriggerContext>;

impl Trigger {
    /// Creates the consumer and joins the group; the returned future
    /// consumes until told to stop, or the function gives up, and returns
    /// the state it ended in.
    pub fn start(self) -> anyhow::Result<impl Future<Output = FunctionState> + Send + 'static> {
        let workers = Workers::default();
        let commit_failed = Arc::new(AtomicBool::new(false));
        let (assigned_tx, assigned) = mpsc::unbounded_channel();
        let consumer = Arc::new(self.consumer(workers.clone(), commit_failed.clone(), assigned_tx)?);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        self.status.set_state(FunctionState::Running);
        Ok(self.run(consumer, workers, assigned, commit_failed))
    }

    async fn run(
        self,
        consumer: Arc<TriggerConsumer>,
        workers: Workers,
        mut assigned: mpsc::UnboundedReceiver<Assigned>,
        commit_failed: Arc<AtomicBool>,
    ) -> FunctionState {
        let name = self.status.name().to_string();
        // Tells the workers to stop after their call in flight.
        let (halt_tx, halt) = watch::channel(false);
        let (ended_tx, mut ended) = mpsc::unbounded_channel::<FunctionState>();
        // Every partition queue split off, for the consumer's life.
        let mut queues: HashMap<i32, Arc<PartitionQueue>> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(COMMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut stop = self.stop.clone();
        // A worker that panicked: the trigger ends the same way, once the
        // others have stopped, so that its supervisor starts it again.
        let mut crashed: Option<Box<dyn std::any::Any + Send>> = None;
        // After a consumer error, the consumer is left alone for a moment
        // (librdkafka recovers by itself), while the rest goes on.
        let quiet = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(quiet);
        let mut quieted = false;
        let state = loop {
            tokio::select! {
                () = stopped(&mut stop) => break FunctionState::Stopped,
                Some(state) = ended.recv() => break state,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined
                        && e.is_panic()
                    {
                        crashed = Some(e.into_panic());
                        break FunctionState::Stopped;
                    }
                }
                Some(Assigned { partition, flags, queue }) = assigned.recv() => {
                    if let Some(queue) = queue {
                        queues.insert(partition, queue);
                    }
                    let Some(queue) = queues.get(&partition).cloned() else { continue };
                    let worker = Worker {
                        handler: self.handler(),
                        counters: None,
                        halt: halt.clone(),
                        ended: ended_tx.clone(),
                        last_taken: None,
                        rewound: None,
                    };
                    let mark = self.journal.partition_mark(&name, &self.topic, partition);
                    tasks.spawn(worker.run(queue, flags, mark));
                }
                // Serves the consumer's events; its records all come on the
                // partitions' own queues.
                () = &mut quiet, if quieted => quieted = false,
                record = consumer.recv(), if !quieted => match record {
                    Ok(record) => {
                        // Not stored: it is seen again by the consumer made afresh.
                        let (partition, offset) = (record.partition(), record.offset());
                        tracing::error!(function = %name, partition, offset, "a record came on the consumer's own queue: starting afresh");
                        crashed = Some(Box::new(format!("partition {partition} has no queue of its own")));
                        break FunctionState::Stopped;
                    }
                    Err(e) => {
                        // librdkafka recovers from broker errors by itself.
                        tracing::warn!(function = %name, "consumer error: {e}");
                        quiet.as_mut().reset(tokio::time::Instant::now() + CONSUMER_ERROR_PAUSE);
                        quieted = true;
                    }
                },
                _ = tick.tick() => {
                    if self.store_finished(&consumer, &workers) | commit_failed.swap(false, Ordering::AcqRel) {
                        commit(&consumer, CommitMode::Async, &name);
                    }
                }
            }
        };
        // The workers finish their calls in flight, then what they handled
        // is committed (for the partitions this consumer still owns) and the
        // consumer leaves the group when dropped (with the last queue).
        let _ = halt_tx.send(true);
        self.status.set_lag(Vec::new());
        while tasks.join_next().await.is_some() {}
        self.store_finished(&consumer, &workers);
        commit(&consumer, CommitMode::Sync, &name);
        drop(queues);
        drop(assigned);
        if let Some(panic) = crashed {
            std::panic::resume_unwind(panic);
        }
        tracing::info!(function = %name, ?state, "trigger stopped");
        state
    }

    /// Stores what the workers of the partitions owned now have finished.
    fn store_finished(&self, consumer: &TriggerConsumer, workers: &Workers) -> bool {
        let owned: Vec<(i32, Arc<WorkerFlags>)> =
            workers.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(p, w)| (*p, w.clone())).collect();
        store_finished(consumer, &self.topic, owned.iter().map(|(p, w)| (*p, w)), self.status.name())
    }

    fn handler(&self) -> Arc<Handler> {
        Arc::new(Handler {
            status: self.status.clone(),
            producer: self.producer.clone(),
            journal: self.journal.clone(),
            deployment: self.deployment.clone(),
            metrics: self.metrics.clone(),
            name: Arc::from(self.status.name()),
            topic: Arc::from(self.topic.as_str()),
        })
    }

    fn consumer(
        &self,
        workers: Workers,
        commit_failed: Arc<AtomicBool>,
        assigned: mpsc::UnboundedSender<Assigned>,
    ) -> anyhow::Result<TriggerConsumer> {
        let mut config = self.cluster.config();
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            // Quick group joins and failure detection.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // An idle consumer asks again after at most this long: the bound
            // on how late a new record is seen.
            .set("fetch.wait.max.ms", "100")
            // What is fetched ahead of each partition's worker.
            .set("queued.min.messages", QUEUED_MIN_MESSAGES)
            .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES)
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            // The consumer lag of the metrics comes from librdkafka's statistics.
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        let context = TriggerContext {
            topic: self.topic.clone(),
            status: self.status.clone(),
            workers,
            call_deadline: self.call_deadline,
            commit_failed,
            consumer: OnceLock::new(),
            split: Mutex::default(),
            assigned,
        };
        let consumer: TriggerConsumer = self.cluster.create_with(config, context)?;
        consumer.subscribe(&[&self.topic])?;
        Ok(consumer)
    }
}

fn commit(consumer: &TriggerConsumer, mode: CommitMode, function: &str) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(function, "commit failed (records may be seen again): {e}"),
    }
}

/// One partition's worker: runs its records, up to the function's
/// `max-in-flight` at once, those of one key one after the other.
struct Worker {
    handler: Arc<Handler>,
    /// The counters of the version deployed when its last run began,
    /// handed to the next run unless another version is deployed by then.
    counters: Option<Arc<VersionMetrics>>,
    halt: watch::Receiver<bool>,
    /// Where the state to stop in goes when the function cannot go on.
    ended: mpsc::UnboundedSender<FunctionState>,
    /// The offset of the last record taken. A record at or before it means
    /// the partition's offsets went back within one assignment (its log
    /// truncated, or the topic made anew while the consumer kept it).
    last_taken: Option<i64>,
    /// Such a record, held, and nothing read past it, until every record
    /// taken before it is finished: the window then starts afresh from it.
    /// The window's offsets only ever increase, so that each finished
    /// offset names one record.
    rewound: Option<(Message, bool)>,
}

/// The records a worker has taken and not finished, in offset order: the
/// offset stored is always that of the last record before the first
/// unfinished one, so nothing is committed before it is handled.
#[derive(Default)]
struct Window {
    taken: VecDeque<(i64, bool)>,
    /// The last record before the first unfinished one, when it moved since
    /// it was last stored.
    finished: Option<i64>,
}

impl Window {
    /// Takes `offsets`, each past those taken before.
    fn take_all(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for offset in offsets {
            debug_assert!(self.taken.back().is_none_or(|&(last, _)| last < offset), "offset {offset} taken after {:?}", self.taken.back());
            self.taken.push_back((offset, false));
        }
    }

    /// Marks `offset` finished.
    fn finish(&mut self, offset: i64) {
        self.finish_all(std::iter::once(offset));
    }

    /// Marks every one of `offsets` finished.
    fn finish_all(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for offset in offsets {
            if let Ok(i) = self.taken.binary_search_by_key(&offset, |(o, _)| *o) {
                self.taken[i].1 = true;
            }
        }
        while let Some(&(o, true)) = self.taken.front() {
            self.finished = Some(o);
            self.taken.pop_front();
        }
    }
}

impl Worker {
    /// Runs the partition's records until the trigger halts, the partition
    /// is revoked, or the function cannot go on; then waits for the records
    /// running.
    async fn run(mut self, queue: Arc<PartitionQueue>, flags: Arc<WorkerFlags>, mut mark: PartitionMark) {
        // Taken and not started (a record of its key runs, or every slot is
        // taken), in offset order, with whether each is new.
        let mut waiting: VecDeque<(Message, bool)> = VecDeque::new();
        let mut busy_keys = BusyKeys::default();
        let mut running = JoinSet::new();
        let mut taking = true;
        // One stream for the worker's life: making one registers a waker
        // with the queue, under a lock, and dropping it unregisters it.
        let mut stream = queue.stream();
        // A fixed tick, never reset: resetting it per record read would
        // register its timer anew each time (the timer wheel's lock).
        let mut look_again = tokio::time::interval(QUEUE_LOOK_AGAIN);
        look_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        look_again.reset();
        let mut read_since_look = false;
        loop {
            let (max, inline, batch) = self.handler.scheduling();
            // Room for a whole batch to form while the slots are taken.
            let queue_limit = QUEUED_PER_PARTITION.max(batch);
            if taking
                && waiting.is_empty()
                && running.is_empty()
                && let Some((message, new_record)) = self.rewound.take()
            {
                // Every record taken before it is finished (a record that
                // was not would have stopped the worker taking): the window
                // is empty.
                self.last_taken = Some(message.offset);
                let mut window = flags.window();
                window.take_all([message.offset]);
                // What it finished last is of the log before: the next
                // commit names this record, the first of the log now.
                window.finished = Some(message.offset - 1);
                drop(window);
                waiting.push_back((message, new_record));
            }
            if taking {
                while running.len() < max && taking {
                    let mut picked = pick(&mut waiting, &busy_keys, batch);
                    if picked.is_empty() {
                        break;
                    }
                    for (message, _) in &picked {
                        if let Some(key) = &message.key {
                            busy_keys.insert(key_hash(key));
                        }
                    }
                    // Boxed, so that a task moves a pointer, not the run's
                    // state. With reused instances, polled here once: a run
                    // that does not wait (no capability waiting on a
                    // service; a deadline tick also ends the poll) is done
                    // without a task of its own, which costs more than such
                    // a call; one that waits goes on as a task, so that the
                    // partition's other keys go on meanwhile. A fresh
                    // instance is always a task: instantiating takes long
                    // enough for the partition's records to gain from
                    // running on every core; so is a batch, whose task is
                    // shared by its records.
                    let alone = picked.len() == 1;
                    let mut run: Pin<Box<dyn Future<Output = Ran> + Send>> = if alone {
                        let (message, new_record) = picked.pop().expect("one record");
                        Box::pin(self.record(message, new_record, None, flags.clone()))
                    } else {
                        Box::pin(self.records(picked, flags.clone()))
                    };
                    if inline && alone {
                        match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
                            Poll::Ready(ran) => self.finished(ran, &mut busy_keys, &mut taking, &mut waiting, &mut running, &flags),
                            Poll::Pending => {
                                running.spawn(run);
                            }
                        }
                    } else {
                        running.spawn(run);
                    }
                }
            }
            if !taking && running.is_empty() {
                return;
            }
            if taking && self.rewound.is_some() && waiting.is_empty() && running.is_empty() {
                // The records before the held one all finished just now,
                // run inline: it goes on at once.
                continue;
            }
            let reading = taking && waiting.len() < queue_limit && self.rewound.is_none();
            tokio::select! {
                biased;
                () = stopped(&mut self.halt), if taking => taking = false,
                // Before the queue: once revoked, no record is read from it
                // (the next owner, maybe this consumer again, reads them).
                () = flags.revoked.notified(), if taking => taking = false,
                Some(joined) = running.join_next() => {
                    let ran = match joined {
                        Ok(done) => done,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => continue,
                    };
                    self.finished(ran, &mut busy_keys, &mut taking, &mut waiting, &mut running, &flags);
                }
                // Before the stream: when no record was read since the last
                // tick, the worker looks at its queue itself, and a record
                // there is one whose wake-up did not come (or, rarely, one
                // that came just as it looked). After the stream, the stream
                // would take it first, as if woken.
                _ = look_again.tick(), if reading => {
                    if std::mem::take(&mut read_since_look) {
                        // The queue is being read; nothing to look for.
                    } else if let Some(record) = stream.next().now_or_never().flatten() {
                        let partition = record.as_ref().map(|r| r.partition()).ok();
                        tracing::warn!(
                            function = self.handler.status.name(),
                            partition,
                            "the partition's queue had a record but no wake-up came: read by the periodic look"
                        );
                        if !self.take_fetched(record, &mut stream, &flags, &mut mark, &mut waiting, queue_limit).await {
                            taking = false;
                        }
                    }
                }
                Some(record) = stream.next(), if reading => {
                    read_since_look = true;
                    if !self.take_fetched(record, &mut stream, &flags, &mut mark, &mut waiting, queue_limit).await {
                        taking = false;
                    }
                }
            }
            if !taking {
                // Left to the partition's next owner (or this worker's next start).
                waiting.clear();
                self.rewound = None;
            }
        }
    }

    /// Takes `record`, and with it every record already fetched (up to
    /// `queue_limit` waiting): the runs started next see them all, so that
    /// batches form however fast the function is, and a record costs no
    /// turn of the worker's loop of its own. False once the worker must
    /// stop taking records.
    async fn take_fetched<'q>(
        &mut self,
        record: Result<BorrowedMessage<'q>, KafkaError>,
        stream: &mut MessageStream<'q, TriggerContext>,
        flags: &WorkerFlags,
        mark: &mut PartitionMark,
        waiting: &mut VecDeque<(Message, bool)>,
        queue_limit: usize,
    ) -> bool {
        let before = waiting.len();
        let mut next = Some(record);
        let taking = 'drain: {
            while let Some(record) = next.take() {
                let message = match record {
                    Ok(record) => to_wit(&record),
                    Err(e) => {
                        // librdkafka recovers from broker errors by itself.
                        tracing::warn!(function = self.handler.status.name(), "consumer error: {e}");
                        break 'drain wait(&mut self.halt, Duration::from_millis(500)).await;
                    }
                };
                // Outside the call fence: a revocation need not wait for the
                // journal; a mark raised by a revoked worker only makes the
                // next owner read more journals.
                let Some(new_record) = self.ensure_mark(&message, flags, mark).await else { break 'drain false };
                if let Some(last) = self.last_taken
                    && message.offset <= last
                {
                    tracing::warn!(
                        function = self.handler.status.name(), partition = message.partition, from = last, to = message.offset,
                        "the partition's offsets went back (its log truncated, or the topic made anew): \
                         the records taken before finish first, then it goes on from there"
                    );
                    self.rewound = Some((message, new_record));
                    break 'drain true;
                }
                self.last_taken = Some(message.offset);
                waiting.push_back((message, new_record));
                // Once revoked (or halting), nothing more is read.
                if waiting.len() < queue_limit && !flags.is_revoked() && !*self.halt.borrow() {
                    next = stream.next().now_or_never().flatten();
                }
            }
            true
        };
        // In the window before any of them runs (so before any finishes),
        // with one lock for them all.
        flags.window().take_all(waiting.iter().skip(before).map(|(message, _)| message.offset));
        taking
    }

    /// A run ended: its keys are free again, and the worker stops taking
    /// records when the run says so. A batch that stopped at a record it
    /// declined hands that record to a run of its own (which holds its key)
    /// and the records after it back to the ready ones, ahead of the rest:
    /// a record retried holds back the later records of its key only.
    fn finished(
        &mut self,
        ran: Ran,
        busy_keys: &mut BusyKeys,
        taking: &mut bool,
        waiting: &mut VecDeque<(Message, bool)>,
        running: &mut JoinSet<Ran>,
        flags: &Arc<WorkerFlags>,
    ) {
        let Ran { keys, step, split } = ran;
        match keys {
            Keys::One(Some(key)) => {
                busy_keys.remove(&key);
            }
            Keys::One(None) => {}
            Keys::Many(keys) => {
                for key in keys {
                    busy_keys.remove(&key);
                }
            }
        }
        match step {
            Step::Done(_) => {}
            Step::Revoked | Step::Stop(FunctionState::Stopped) => *taking = false,
            Step::Stop(state) => {
                *taking = false;
                let _ = self.ended.send(state);
            }
        }
        // Once not taking, left to the partition's next owner like the
        // records waiting (nothing past them is committed).
        if let Some(Split { declined, trace, rest }) = split.filter(|_| *taking) {
            if let Some(key) = &declined.key {
                busy_keys.insert(key_hash(key));
            }
            // Not new: the batch started it, in the trace it goes on in.
            running.spawn(self.record(declined, false, Some(trace), flags.clone()));
            for message in rest.into_iter().rev() {
                waiting.push_front((message, false));
            }
        }
    }

    /// What a run takes along: the handler, the counters of the version
    /// deployed now (looked up when another version was deployed since the
    /// last run), and a fence on the partition.
    fn run_parts(&mut self, flags: Arc<WorkerFlags>) -> (Run, Fence) {
        let handler = &self.handler;
        let counters = held_counters(&mut self.counters, &handler.metrics, handler.status.name(), &handler.deployment.borrow().version);
        let run = Run { handler: handler.clone(), version_metrics: Some(counters), running: None };
        (run, Fence { flags, halt: self.halt.clone(), inside: false })
    }

    /// One record's run: polled by the worker, then a task of its own if it
    /// waits. In `trace`, when a batch began it in one.
    fn record(
        &mut self,
        message: Message,
        new_record: bool,
        trace: Option<RecordTrace>,
        flags: Arc<WorkerFlags>,
    ) -> impl Future<Output = Ran> + Send + 'static {
        let (mut run, mut fence) = self.run_parts(flags);
        async move {
            if !fence.enter() {
                return Ran { keys: Keys::One(message.key.as_deref().map(key_hash)), step: Step::Revoked, split: None };
            }
            // The record's trace (from its `traceparent`, or a new one) tags
            // the host's and the function's log lines and its effects.
            let (parent, trace) = trace.unwrap_or_else(|| record_trace(&message));
            let span = tracing::info_span!("record", trace_id = %trace.trace_id(), partition = message.partition, offset = message.offset);
            let since = trace::otlp::enabled().then(SystemTime::now);
            // Boxed: the run's future, moved into a task's box and polled
            // through two wrappers, is then small (it was 12 KiB, copied
            // several times per record).
            let step = trace::scope(trace, Box::pin(run.process(&message, new_record, &mut fence))).instrument(span).await;
            if let Some(since) = since {
                run.export_span(&message, trace, parent, since, &step);
            }
            if let Step::Done(_) = step {
                // Finished before the try ends, so a revocation (which waits
                // for the try) stores it and commits it; stored once every
                // record before it is finished too.
                fence.flags.window().finish(message.offset);
            }
            drop(fence);
            Ran { keys: Keys::One(message.key.as_deref().map(key_hash)), step, split: None }
        }
    }

    /// The run of several ready records of the partition, in offset order,
    /// handed to one call of the function's `handle-batch`.
    fn records(
        &mut self,
        records: Vec<(Message, bool)>,
        flags: Arc<WorkerFlags>,
    ) -> impl Future<Output = Ran> + Send + 'static {
        let (mut run, mut fence) = self.run_parts(flags);
        async move {
            if !fence.enter() {
                let keys = Keys::Many(records.iter().filter_map(|(m, _)| m.key.as_deref().map(key_hash)).collect());
                return Ran { keys, step: Step::Revoked, split: None };
            }
            let (messages, new_records): (Vec<Message>, Vec<bool>) = records.into_iter().unzip();
            // The batch runs in no one record's trace: each record's
            // capability calls, log lines and span carry its own.
            let first = &messages[0];
            let last = messages.last().map_or(first.offset, |m| m.offset);
            let span = tracing::info_span!("records", partition = first.partition, offset = first.offset, last, count = messages.len());
            let (step, split) = run.process_batch(&messages, &new_records, &mut fence).instrument(span).await;
            drop(fence);
            // The records' keys, which the worker frees (a split's declined
            // record takes its key again).
            let keys = Keys::Many(messages.iter().filter_map(|m| m.key.as_deref().map(key_hash)).collect());
            Ran { keys, step, split }
        }
    }
}

/// A record's trace context: its parent from the `traceparent` header, if
/// any, and its own (a child of it, or a new trace).
type RecordTrace = (Option<TraceContext>, TraceContext);

/// The [`RecordTrace`] of `message` (a new one each time, when its headers
/// have none).
fn record_trace(message: &Message) -> RecordTrace {
    let parent = TraceContext::from_headers(message.headers.iter().map(|h| (h.key.as_str(), h.value.as_slice())));
    (parent, parent.map_or_else(TraceContext::root, |parent| parent.child()))
}

/// How a run ended: the keys it held, its step, and the records a batch
/// handed back.
struct Ran {
    keys: Keys,
    step: Step,
    split: Option<Split>,
}

/// A batch stopped at a record the function declined, with records after it.
struct Split {
    /// To run on alone, as any record is run (retried, dead-lettered...).
    declined: Message,
    /// Its trace in the batch, which it keeps.
    trace: RecordTrace,
    /// Not run: ready again, in offset order.
    rest: Vec<Message>,
}

/// The keys a run holds: of one record, or of a batch.
enum Keys {
    One(Option<u64>),
    Many(Vec<u64>),
}

/// The keys of a partition's records running, by their [`key_hash`]: no
/// key is copied for it. Two keys of one hash only wait for each other, so
/// each keeps its order all the same.
type BusyKeys = HashSet<u64, foldhash::fast::RandomState>;

/// The hash of a record's key: foldhash, seeded per process, since the keys
/// are the producers' data.
fn key_hash(key: &[u8]) -> u64 {
    static SEED: std::sync::LazyLock<foldhash::fast::RandomState> = std::sync::LazyLock::new(Default::default);
    std::hash::BuildHasher::hash_one(&*SEED, key)
}

/// Takes the records to run next off `waiting`: the first whose key is not
/// running, or with `batch` > 1, up to `batch` of them in offset order
/// (several of one key among them, which the batch runs in their order).
fn pick(waiting: &mut VecDeque<(Message, bool)>, busy_keys: &BusyKeys, batch: usize) -> Vec<(Message, bool)> {
    let free = |m: &Message| m.key.as_deref().is_none_or(|k| !busy_keys.contains(&key_hash(k)));
    if batch <= 1 {
        let ready = waiting.iter().position(|(m, _)| free(m));
        return ready.and_then(|i| waiting.remove(i)).into_iter().collect();
    }
    let mut picked = Vec::new();
    let mut rest = VecDeque::with_capacity(waiting.len());
    for (message, new_record) in waiting.drain(..) {
        if picked.len() < batch && free(&message) {
            picked.push((message, new_record));
        } else {
            rest.push_back((message, new_record));
        }
    }
    *waiting = rest;
    picked
}

/// What a record's run holds: the partition's fence (a try runs only while
/// the partition is this worker's), and the halt signal.
struct Fence {
    flags: Arc<WorkerFlags>,
    halt: watch::Receiver<bool>,
    /// A try of the record is running (and counted in the flags).
    inside: bool,
}

/// How a wait between two tries ended.
enum Waited {
    Done,
    Halted,
    Revoked,
}

impl Fence {
    /// Starts a try; false when the partition was revoked.
    fn enter(&mut self) -> bool {
        self.inside = self.flags.begin();
        self.inside
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.inside) {
            self.flags.end();
        }
    }

    /// Waits `backoff` between two tries, outside the fence (a revocation
    /// does not wait for a back-off), then enters it again.
    async fn wait(&mut self, backoff: Duration) -> Waited {
        self.leave();
        let deadline = Instant::now() + backoff;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !wait(&mut self.halt, left.min(REVOCATION_CHECK)).await {
                return Waited::Halted;
            }
            if self.flags.is_revoked() {
                return Waited::Revoked;
            }
        }
        if self.enter() { Waited::Done } else { Waited::Revoked }
    }
}

/// Ends the try when the record's run ends, also when it panics, so that a
/// revocation never waits for a try that cannot end.
impl Drop for Fence {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Worker {
    /// Makes sure the partition's journal mark is past `message`, and says
    /// whether the record is new (below no earlier owner's mark, so without
    /// a journal). Waits while the journal is unavailable; `None` when the
    /// trigger halts or the partition is revoked meanwhile.
    async fn ensure_mark(&mut self, message: &Message, flags: &WorkerFlags, mark: &mut PartitionMark) -> Option<bool> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match mark.ensure(message.offset).await {
                Ok(new) => return Some(new),
                Err(e) => {
                    self.handler.status.count(|c| &c.waited_for_service);
                    let (function, partition, offset) = (self.handler.status.name(), message.partition, message.offset);
                    tracing::warn!(function, partition, offset, ?backoff, "cannot start the record yet: {e}");
                }
            }
            if !wait(&mut self.halt, backoff).await || flags.is_revoked() {
                return None;
            }
            backoff = (backoff * 2).min(MAX_OUTAGE_BACKOFF);
        }
    }
}

/// Runs records through the function: what a worker and its runs share.
struct Handler {
    status: Arc<Status>,
    producer: EventProducer,
    journal: Journal,
    /// The version to run; replaced in place by a deploy.
    deployment: watch::Receiver<Arc<Deployment>>,
    metrics: Metrics,
    /// The function's name, as the journal keys its calls.
    name: Arc<str>,
    /// The trigger's topic, shared by its records' journal keys.
    topic: Arc<str>,
}

/// One run of a worker's records: its handler, and what is the run's own
/// (the version it runs, and that version's counters).
struct Run {
    handler: Arc<Handler>,
    /// The counters of the version last run.
    version_metrics: Option<Arc<VersionMetrics>>,
    /// The version its last try ran.
    running: Option<Arc<Deployment>>,
}

impl std::ops::Deref for Run {
    type Target = Handler;

    fn deref(&self) -> &Handler {
        &self.handler
    }
}

/// The counters of `version`: those `held` when they are its, else looked
/// up and held from now on.
fn held_counters(held: &mut Option<Arc<VersionMetrics>>, metrics: &Metrics, function: &str, version: &str) -> Arc<VersionMetrics> {
    match held {
        Some(m) if m.version() == version => m.clone(),
        _ => held.insert(Arc::new(metrics.version(function, version))).clone(),
    }
}

enum Step {
    /// The record may be committed.
    Done(Done),
    /// The partition was taken away between two tries: its next owner has
    /// the record.
    Revoked,
    Stop(FunctionState),
}

/// How a record that may be committed ended.
enum Done {
    Handled,
    /// Skipped by the manifest's filter.
    Filtered,
    /// Copied to the dead-letter topic, for this reason.
    DeadLettered(String),
}

impl Handler {
    /// How many records of a partition may run at once, and whether a
    /// record's run is first polled by its worker (with reused instances),
    /// by the version to run now.
    fn scheduling(&self) -> (usize, bool, usize) {
        let deployed = self.deployment.borrow();
        let kafka = &deployed.manifest.trigger.kafka;
        let batch = if deployed.function.batches() { kafka.max_batch as usize } else { 1 };
        (kafka.max_in_flight as usize, deployed.manifest.reuse.is_some(), batch)
    }

    /// The journal key of `message`.
    fn record_key(&self, message: &Message) -> RecordKey {
        let event_id = message
            .headers
            .iter()
            .find(|h| h.key == RecordKey::EVENT_ID_HEADER)
            .and_then(|h| std::str::from_utf8(&h.value).ok());
        let topic = if *self.topic == *message.topic { self.topic.clone() } else { Arc::from(message.topic.as_str()) };
        RecordKey::new(topic, message.partition, message.offset, event_id).at(message.timestamp_ms)
    }

}

impl Run {
    /// Runs ready records through calls of `handle-batch`. A record the
    /// function declined goes on alone, as `process` runs any record (its
    /// retries, dead-lettering and waits for a service; the batch's try does
    /// not count against its budget): in a run of its own, with the records
    /// after it handed back to the worker (the [`Split`]), so that while it
    /// is retried they go on by their keys; when it is the last, here.
    /// After a trap, a timeout or no instance (which do not say which
    /// record it was on) the rest go one by one. Each record is finished in
    /// the window as it may be committed. Answers `Done` when all run here
    /// may be, else the step of the first that may not (those after it are
    /// left unfinished: not committed).
    async fn process_batch(&mut self, messages: &[Message], new_records: &[bool], fence: &mut Fence) -> (Step, Option<Split>) {
        let deployment = self.current();
        let since = trace::otlp::enabled().then(SystemTime::now);
        let filter = deployment.manifest.trigger.kafka.filter.as_ref();
        let mut kept: Vec<usize> = Vec::with_capacity(messages.len());
        let mut traces: Vec<RecordTrace> = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let trace = record_trace(message);
            if filter.is_none_or(|f| f.matches(message)) {
                kept.push(i);
                traces.push(trace);
            } else {
                self.status.count(|c| &c.filtered);
                self.counters_of(&deployment.version).filtered.inc();
                self.ended(fence, message, trace, since, &Step::Done(Done::Filtered));
            }
        }
        let owned: Vec<Message>;
        let (batch, new_records): (&[Message], Vec<bool>) = if kept.len() == messages.len() {
            (messages, new_records.to_vec())
        } else {
            owned = kept.iter().map(|&i| messages[i].clone()).collect();
            (&owned, kept.iter().map(|&i| new_records[i]).collect())
        };
        let name = self.name.clone();
        if batch.is_empty() {
            return (Step::Done(Done::Handled), None);
        }
        if !deployment.function.batches() {
            return (self.one_by_one(batch, &traces, since, fence).await, None);
        }
        let calls: Vec<_> = batch
            .iter()
            .zip(&new_records)
            .zip(&traces)
            .map(|((message, &new_record), &(_, trace))| {
                self.journal.calls(name.clone(), self.record_key(message), new_record, Some(trace))
            })
            .collect();
        let counters = self.counters_of(&deployment.version);
        let answer = deployment.function.run_batch(batch, &calls).await;
        counters.handling.observe(answer.took.as_secs_f64());
        // The records handled, counted and finished together: one lock of
        // the window, one add to each counter.
        let handled = &batch[..answer.handled];
        let mut replayed = 0;
        for ((message, calls), &trace) in handled.iter().zip(&calls).zip(&traces) {
            let stats = calls.handled().await;
            if stats.replayed > 0 {
                replayed += 1;
                tracing::info!(function = %name, offset = message.offset, trace_id = %trace.1.trace_id(), replayed = stats.replayed, "calls answered from the journal");
            }
        }
        let count = handled.len() as u64;
        counters.handled.inc_by(count);
        self.status.count_by(|c| &c.replayed, replayed);
        self.status.count_by(|c| &c.handled, count);
        self.status.count_by(|c| &c.batched, count);
        if let Some(since) = since {
            for (message, &(parent, context)) in handled.iter().zip(&traces) {
                self.export_span(message, context, parent, since, &Step::Done(Done::Handled));
            }
        }
        fence.flags.window().finish_all(handled.iter().map(|m| m.offset));
        if answer.handled == batch.len() && matches!(answer.outcome, Outcome::Handled) {
            return (Step::Done(Done::Handled), None);
        }
        for calls in &calls[answer.handled..] {
            calls.unhandled(KEPT_DEAD_LETTERED).await;
        }
        tracing::debug!(function = %name, handled = answer.handled, of = batch.len(), "batch stopped: {}", answer.outcome.kind());
        // A declined record is known: it goes on alone, and the records
        // after it are ready again (never started by the SDK's loop,
        // but a component may have begun them: their journals are read).
        // A trap, a timeout or no instance does not say which record it
        // was on: the rest go one by one.
        let alone = match answer.outcome {
            Outcome::Declined(_) => answer.handled + 1,
            _ => batch.len(),
        };
        if alone < batch.len() {
            let split = Split { declined: batch[answer.handled].clone(), trace: traces[answer.handled], rest: batch[alone..].to_vec() };
            return (Step::Done(Done::Handled), Some(split));
        }
        (self.one_by_one(&batch[answer.handled..], &traces[answer.handled..], since, fence).await, None)
    }

    /// Runs `messages` of a batch one after the other as `process` runs a
    /// record (not as new ones: the batch may have started them), each in
    /// its trace (`traces`, one per message); answers as `process_batch`
    /// does.
    async fn one_by_one(&mut self, messages: &[Message], traces: &[RecordTrace], since: Option<SystemTime>, fence: &mut Fence) -> Step {
        for (message, &trace) in messages.iter().zip(traces) {
            let span = tracing::info_span!("record", trace_id = %trace.1.trace_id(), offset = message.offset);
            let step = trace::scope(trace.1, self.process(message, false, fence)).instrument(span).await;
            self.ended(fence, message, trace, since, &step);
            if !matches!(step, Step::Done(_)) {
                return step;
            }
        }
        Step::Done(Done::Handled)
    }

    /// A record of a batch (run from `since`, when spans are exported, in
    /// `trace`) ended in `step`: its span is exported, and it is finished in
    /// the window when it may be committed.
    fn ended(&self, fence: &Fence, message: &Message, (parent, context): RecordTrace, since: Option<SystemTime>, step: &Step) {
        if let Some(since) = since {
            self.export_span(message, context, parent, since, step);
        }
        if let Step::Done(_) = step {
            fence.flags.window().finish(message.offset);
        }
    }

    /// The version to run now.
    fn current(&mut self) -> Arc<Deployment> {
        let deployment = self.deployment.borrow().clone();
        self.running.insert(deployment).clone()
    }

    /// The counters of `version`.
    fn counters_of(&mut self, version: &str) -> Arc<VersionMetrics> {
        held_counters(&mut self.version_metrics, &self.handler.metrics, self.handler.status.name(), version)
    }

    /// Whether another version was deployed while the last call ran: then
    /// the record is run again on it rather than the trigger stopping.
    fn swapped_meanwhile(&self) -> bool {
        self.running.as_ref().is_some_and(|running| !Arc::ptr_eq(running, &self.deployment.borrow()))
    }

    /// Exports the span of `message`'s run (all its tries), which ended in `step`.
    fn export_span(&self, message: &Message, context: TraceContext, parent: Option<TraceContext>, start: SystemTime, step: &Step) {
        use opentelemetry::KeyValue;
        let (outcome, error) = match step {
            Step::Done(Done::Handled) => ("handled", None),
            Step::Done(Done::Filtered) => ("filtered", None),
            Step::Done(Done::DeadLettered(reason)) => ("dead-lettered", Some(reason.clone())),
            Step::Revoked => ("revoked", None),
            Step::Stop(FunctionState::Failed { reason }) => ("failed", Some(reason.clone())),
            Step::Stop(_) => ("stopped", None),
        };
        // The version that ran it last (the one deployed now, if none did).
        let version = match &self.version_metrics {
            Some(m) => m.version().to_string(),
            None => self.deployment.borrow().version.clone(),
        };
        trace::otlp::Finished {
            name: format!("process {}", message.topic).into(),
            kind: opentelemetry::trace::SpanKind::Consumer,
            context,
            parent,
            start,
            attributes: vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", message.topic.clone()),
                KeyValue::new("messaging.destination.partition.id", message.partition.to_string()),
                KeyValue::new("messaging.kafka.offset", message.offset),
                KeyValue::new("runnel.function", self.status.name().to_string()),
                KeyValue::new("runnel.version", version),
                KeyValue::new("runnel.outcome", outcome),
            ],
            error,
        }
        .export();
    }

    /// Runs one record through the function until it may be committed.
    /// `new_record`: no earlier owner of the partition can have started it.
    async fn process(&mut self, message: &Message, new_record: bool, fence: &mut Fence) -> Step {
        let mut deployment = self.current();
        if let Some(filter) = &deployment.manifest.trigger.kafka.filter
            && !filter.matches(message)
        {
            self.status.count(|c| &c.filtered);
            self.counters_of(&deployment.version).filtered.inc();
            return Step::Done(Done::Filtered);
        }
        let name = self.name.clone();
        let key = self.record_key(message);
        // Tries in all, retry-later answers and traps counted against the
        // budget, waits for a service.
        let (mut attempts, mut declined, mut failures, mut outages) = (0u32, 0u32, 0u32, 0u32);
        let mut budget_since: Option<Instant> = None;
        loop {
            // Each try runs the version deployed when it starts.
            if attempts > 0 {
                deployment = self.current();
            }
            let counters = self.counters_of(&deployment.version);
            let policy = deployment.manifest.trigger.kafka.retry;
            let version = short(&deployment.version);
            let offset = message.offset;
            attempts += 1;
            // A record's first try needs no journal read when no one can
            // have started it (new at these coordinates, and not an event
            // another delivery may have started).
            let calls = self.journal.calls(name.clone(), key.clone(), attempts == 1 && new_record, None);
            let invocation = deployment.function.run(message, &calls).await;
            counters.handling.observe(invocation.took.as_secs_f64());
            let outcome = invocation.outcome;
            if matches!(outcome, Outcome::Handled) {
                counters.handled.inc();
            } else {
                counters.failed(outcome.kind());
            }
            // Marked handled now when it was (nothing below waits for a
            // service then): one look at the journal's calls.
            let stats = if matches!(outcome, Outcome::Handled) {
                calls.handled().await
            } else {
                let stats = calls.stats().await;
                calls.unhandled(KEPT_DEAD_LETTERED).await;
                stats
            };
            if stats.replayed > 0 {
                self.status.count(|c| &c.replayed);
                tracing::info!(function = %name, offset, replayed = stats.replayed, "calls answered from the journal");
            }
            // A service was down: wait for it, however long; the function's
            // budget is not touched.
            if stats.unavailable
                && let Some(reason) = match &outcome {
                    Outcome::Declined(HandlerError::RetryLater(reason)) => Some(reason.clone()),
                    Outcome::Failed(error) => Some(format!("{error:#}")),
                    _ => None,
                }
            {
                outages += 1;
                budget_since = None;
                self.status.count(|c| &c.retried);
                counters.retried.inc();
                self.status.count(|c| &c.waited_for_service);
                let backoff = policy.backoff(outages - 1).min(MAX_OUTAGE_BACKOFF);
                tracing::warn!(function = %name, offset, ?backoff, "a service is unavailable, will retry: {reason}");
                match fence.wait(backoff).await {
                    Waited::Done => continue,
                    Waited::Halted => return Step::Stop(FunctionState::Stopped),
                    Waited::Revoked => return Step::Revoked,
                }
            }
            let backoff = match outcome {
                Outcome::Handled => {
                    self.status.count(|c| &c.handled);
                    return Step::Done(Done::Handled);
                }
                Outcome::Declined(HandlerError::BadInput(reason)) => {
                    tracing::warn!(function = %name, version, offset, "bad input: {reason}");
                    self.status.note("bad-input", message.partition, offset, &reason);
                    self.status.set_last_error(format!("bad input at offset {offset}: {reason}"));
                    let reason = format!("bad input: {reason}");
                    return Box::pin(self.dead_letter_until_done(message, &reason, &deployment.version, attempts, fence)).await;
                }
                Outcome::Declined(HandlerError::GiveUp(reason)) => {
                    tracing::error!(function = %name, version, offset, "gave up: {reason}");
                    self.status.note("give-up", message.partition, offset, &reason);
                    if self.swapped_meanwhile() {
                        continue;
                    }
                    return Step::Stop(FunctionState::Failed { reason: format!("gave up: {reason}") });
                }
                Outcome::NotStarted(e) => {
                    tracing::error!(function = %name, version, "cannot start: {e:#}");
                    self.status.note("not-started", message.partition, offset, &format!("{e:#}"));
                    if self.swapped_meanwhile() {
                        continue;
                    }
                    return Step::Stop(FunctionState::Failed { reason: format!("{e:#}") });
                }
                Outcome::Declined(HandlerError::RetryLater(reason)) => {
                    declined += 1;
                    let since = *budget_since.get_or_insert_with(Instant::now);
                    if declined >= policy.attempts || since.elapsed() >= policy.within {
                        let reason = format!(
                            "retry budget spent ({declined} retry-later answers in {:?}): {reason}",
                            since.elapsed()
                        );
                        return Box::pin(self.dead_letter_until_done(message, &reason, &deployment.version, attempts, fence)).await;
                    }
                    self.status.count(|c| &c.retried);
                    counters.retried.inc();
                    let backoff = policy.backoff(declined - 1);
                    tracing::warn!(function = %name, offset, ?backoff, "will retry: {reason}");
                    backoff
                }
                Outcome::Failed(error) => {
                    failures += 1;
                    self.status.count(|c| &c.failed);
                    let reason = format!("{error:#}");
                    tracing::error!(function = %name, version, offset, failures, "failed: {reason}");
                    self.status.note("trap", message.partition, offset, &reason);
                    self.status.set_last_error(format!("failed at offset {offset}: {reason}"));
                    if failures >= policy.failures {
                        let reason = format!("failed {failures} times: {reason}");
                        return Box::pin(self.dead_letter_until_done(message, &reason, &deployment.version, attempts, fence)).await;
                    }
                    self.status.count(|c| &c.retried);
                    counters.retried.inc();
                    policy.backoff(failures - 1)
                }
            };
            match fence.wait(backoff).await {
                Waited::Done => {}
                Waited::Halted => return Step::Stop(FunctionState::Stopped),
                Waited::Revoked => return Step::Revoked,
            }
        }
    }

    /// Dead-letters `message`, retrying with back-off until it is done
    /// (then the record may be committed) or the trigger halts. Boxed where
    /// it is awaited: a rare path, kept out of the size of every record's
    /// future.
    async fn dead_letter_until_done(
        &self,
        message: &Message,
        reason: &str,
        version: &str,
        attempts: u32,
        fence: &mut Fence,
    ) -> Step {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.dead_letter(message, reason, version, attempts).await {
                Ok(()) => {
                    tracing::warn!(
                        function = self.status.name(), version = short(version), partition = message.partition,
                        offset = message.offset, attempts, "dead-lettered: {reason}"
                    );
                    self.status.note("dead-letter", message.partition, message.offset, reason);
                    return Step::Done(Done::DeadLettered(reason.to_string()));
                }
                Err(e) => tracing::warn!(
                    function = self.status.name(), offset = message.offset, ?backoff,
                    "cannot dead-letter, will retry: {e:#}"
                ),
            }
            match fence.wait(backoff).await {
                Waited::Done => {}
                Waited::Halted => return Step::Stop(FunctionState::Stopped),
                Waited::Revoked => return Step::Revoked,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Copies `message` to the dead-letter topic; headers name why, after
    /// how many tries, and the `version` that refused it.
    async fn dead_letter(&self, message: &Message, reason: &str, version: &str, attempts: u32) -> anyhow::Result<()> {
        let topic = dead_letter_topic(&message.topic);
        let mut headers: Vec<(&str, Vec<u8>)> =
            message.headers.iter().map(|h| (h.key.as_str(), h.value.clone())).collect();
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        // The record's timestamp is part of its journal key: a replay finds
        // the journal of its tries with it.
        if let Some(at) = message.timestamp_ms {
            headers.push(("runnel-source-timestamp", at.to_string().into_bytes()));
        }
        headers.extend([
            ("runnel-function", self.status.name().as_bytes().to_vec()),
            ("runnel-version", version.as_bytes().to_vec()),
            ("runnel-error", reason.as_bytes().to_vec()),
            ("runnel-attempts", attempts.to_string().into_bytes()),
            ("runnel-source-topic", message.topic.as_bytes().to_vec()),
            ("runnel-source-partition", partition.into_bytes()),
            ("runnel-source-offset", offset.into_bytes()),
        ]);
        self.producer
            .publish(Event { topic: &topic, key: message.key.as_deref(), payload: message.payload.clone(), headers })
            .await?;
        self.status.count(|c| &c.dead_lettered);
        self.metrics.version(self.status.name(), version).dead_lettered.inc();
        Ok(())
    }
}

/// Resolves once `flag` is true (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Waits `backoff`; false when the trigger halts meanwhile.
async fn wait(halt: &mut watch::Receiver<bool>, backoff: Duration) -> bool {
    tokio::select! {
        () = stopped(halt) => false,
        _ = tokio::time::sleep(backoff) => true,
    }
}

/// The first 12 hex digits of a version id, for log lines.
fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

pub(super) fn to_wit(record: &BorrowedMessage<'_>) -> Message {
    Message {
        topic: record.topic().to_string(),
        partition: record.partition(),
        offset: record.offset(),
        key: record.key().map(<[u8]>::to_vec),
        payload: record.payload().unwrap_or_default().to_vec(),
        headers: record
            .headers()
            .map(|hs| {
                hs.iter().map(|h| Header { key: h.key.to_string(), value: h.value.unwrap_or_default().to_vec() }).collect()
            })
            .unwrap_or_default(),
        timestamp_ms: record.timestamp().to_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    /// The offset to store is that of the last record before the first
    /// unfinished one, however the records finish.
    #[test]
    fn the_window_stores_the_last_offset_before_the_first_unfinished_one() {
        let mut window = Window::default();
        window.take_all(10..15);
        window.finish(12);
        assert_eq!(window.finished.take(), None, "10 and 11 are not finished");
        window.finish(10);
        assert_eq!(window.finished.take(), Some(10));
        window.finish_all([11, 14]);
        assert_eq!(window.finished.take(), Some(12), "13 is not finished");
        // An offset it never took changes nothing.
        window.finish(99);
        assert_eq!(window.finished.take(), None);
        window.finish(13);
        assert_eq!(window.finished.take(), Some(14));
        assert!(window.taken.is_empty());
        window.take_all([20]);
        window.finish(20);
        assert_eq!(window.finished.take(), Some(20));
    }

    /// The window's offsets only increase: a partition's offsets that went
    /// back are held by the worker until the window is empty.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "offset 5 taken after")]
    fn the_window_takes_no_offset_before_one_it_holds() {
        let mut window = Window::default();
        window.take_all([10, 11]);
        window.take_all([5]);
    }
}
