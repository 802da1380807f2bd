//! The Kafka trigger of one deployment: a consumer in the function's group
//! that feeds it records one at a time and commits a record's offset only
//! once the function is done with it.
//!
//! The function it runs is read from a `watch` channel before every record,
//! so a new version is swapped in between two records: the record in flight
//! finishes on the old version, the next one runs on the new, and the
//! consumer (its group membership, its position) is untouched.
//!
//! What happens to a record depends on how the function answered:
//! - handled: commit;
//! - filtered out by the manifest's `[trigger.kafka.filter]`: commit, without
//!   running the function;
//! - bad input: copy the record to `<topic>.dlq` (headers say why), then commit;
//! - retry later: run it again after a back-off (up to 30 s), as long as it
//!   takes (on the newest version each time);
//! - give up: stop this consumer without committing, so the record is the
//!   first one seen once another version is deployed (a version deployed
//!   while that call ran gets the record at once instead);
//! - trap or timeout: retry a few times, then dead-letter it and go on;
//! - no instance can be made: stop, as for give up.
//!
//! A dead-letter write that fails is retried (with back-off) on its own: the
//! function is not run again for it.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    ClientContext, Message as _,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers},
    types::RDKafkaErrorCode,
};
use tokio::sync::watch;

use super::{Event, EventProducer, dead_letter_topic};
use crate::platform::{
    deployments::{Deployment, FunctionState, Status},
    runtime::{HandlerError, Header, Message, Outcome},
};

/// How many times a trapping record is tried before it is dead-lettered.
const MAX_FAILED_ATTEMPTS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a trigger needs, handed over by the registry.
pub struct Trigger {
    pub topic: String,
    pub group: String,
    pub brokers: String,
    pub producer: EventProducer,
    pub status: Arc<Status>,
    /// The version to run; replaced in place by a deploy.
    pub deployment: watch::Receiver<Arc<Deployment>>,
    /// Turns true when the trigger must stop.
    pub stop: watch::Receiver<bool>,
}

/// Counts the consumer's rebalances, so that a swap can be shown to cause none.
struct TriggerContext {
    status: Arc<Status>,
}

impl ClientContext for TriggerContext {}

impl ConsumerContext for TriggerContext {
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

impl Trigger {
    /// Creates the consumer and joins the group; the returned future
    /// consumes until told to stop, or the function gives up, and returns
    /// the state it ended in.
    pub fn start(self) -> anyhow::Result<impl Future<Output = FunctionState> + Send + 'static> {
        let consumer = self.consumer()?;
        self.status.set_state(FunctionState::Running);
        Ok(self.run(consumer))
    }

    async fn run(mut self, consumer: TriggerConsumer) -> FunctionState {
        let name = self.status.name().to_string();
        let state = loop {
            let record = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => break FunctionState::Stopped,
                record = consumer.recv() => record,
            };
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    // librdkafka recovers from broker errors by itself.
                    tracing::warn!(function = %name, "consumer error: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match self.process(&record).await {
                Step::Commit => {
                    // Stored only once handled; librdkafka drops what is
                    // stored for partitions taken away by a rebalance.
                    let committed = consumer
                        .store_offset_from_message(&record)
                        .and_then(|()| consumer.commit_consumer_state(CommitMode::Async));
                    if let Err(e) = committed {
                        tracing::warn!(function = %name, "commit failed (the record may be seen again): {e}");
                    }
                }
                Step::Stop(state) => break state,
            }
        };
        // Make sure what was handled reached the broker, for the partitions
        // this consumer still owns.
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(function = %name, "final commit failed (records may be seen again): {e}"),
        }
        tracing::info!(function = %name, ?state, "trigger stopped");
        state
    }

    fn consumer(&self) -> anyhow::Result<TriggerConsumer> {
        let consumer: TriggerConsumer = super::client_config(&self.brokers)
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
            .create_with_context(TriggerContext { status: self.status.clone() })?;
        consumer.subscribe(&[&self.topic])?;
        Ok(consumer)
    }

    /// The version to run now.
    fn current(&mut self) -> Arc<Deployment> {
        self.deployment.borrow_and_update().clone()
    }

    /// Whether another version was deployed while the last call ran: then
    /// the record is run again on it rather than the trigger stopping.
    fn swapped_meanwhile(&self) -> bool {
        self.deployment.has_changed().unwrap_or(false)
    }

    /// Runs one record through the function until it may be committed.
    async fn process(&mut self, record: &BorrowedMessage<'_>) -> Step {
        let message = to_wit(record);
        if let Some(filter) = &self.current().manifest.trigger.kafka.filter
            && !filter.matches(&message)
        {
            self.status.count(|c| &c.filtered);
            return Step::Commit;
        }
        let mut failures = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            let deployment = self.current();
            let name = self.status.name();
            let version = short(&deployment.version);
            let retry_reason = match deployment.function.handle(&message).await {
                Outcome::Handled => {
                    self.status.count(|c| &c.handled);
                    return Step::Commit;
                }
                Outcome::Declined(HandlerError::BadInput(reason)) => {
                    tracing::warn!(function = name, version, offset = message.offset, "bad input: {reason}");
                    self.status.set_last_error(format!("bad input at offset {}: {reason}", message.offset));
                    return self.dead_letter_until_done(&message, &reason, &deployment.version).await;
                }
                Outcome::Declined(HandlerError::RetryLater(reason)) => reason,
                Outcome::Declined(HandlerError::GiveUp(reason)) => {
                    tracing::error!(function = name, version, offset = message.offset, "gave up: {reason}");
                    if self.swapped_meanwhile() {
                        continue;
                    }
                    return Step::Stop(FunctionState::Failed { reason: format!("gave up: {reason}") });
                }
                Outcome::NotStarted(e) => {
                    tracing::error!(function = name, version, "cannot start: {e:#}");
                    if self.swapped_meanwhile() {
                        continue;
                    }
                    return Step::Stop(FunctionState::Failed { reason: format!("{e:#}") });
                }
                Outcome::Failed(error) => {
                    failures += 1;
                    self.status.count(|c| &c.failed);
                    let reason = format!("{error:#}");
                    tracing::error!(function = name, version, offset = message.offset, failures, "failed: {reason}");
                    self.status.set_last_error(format!("failed at offset {}: {reason}", message.offset));
                    if failures >= MAX_FAILED_ATTEMPTS {
                        let reason = format!("failed {failures} times: {reason}");
                        return self.dead_letter_until_done(&message, &reason, &deployment.version).await;
                    }
                    reason
                }
            };
            self.status.count(|c| &c.retried);
            tracing::warn!(function = self.status.name(), offset = message.offset, ?backoff, "will retry: {retry_reason}");
            tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return Step::Stop(FunctionState::Stopped),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Dead-letters `message`, retrying with back-off until it is done
    /// (then the record may be committed) or the trigger is stopped.
    async fn dead_letter_until_done(&mut self, message: &Message, reason: &str, version: &str) -> Step {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.dead_letter(message, reason, version).await {
                Ok(()) => return Step::Commit,
                Err(e) => tracing::warn!(
                    function = self.status.name(), offset = message.offset, ?backoff,
                    "cannot dead-letter, will retry: {e:#}"
                ),
            }
            tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return Step::Stop(FunctionState::Stopped),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Copies `message` to the dead-letter topic; headers name why and the
    /// `version` that refused it.
    async fn dead_letter(&self, message: &Message, reason: &str, version: &str) -> anyhow::Result<()> {
        let topic = dead_letter_topic(&message.topic);
        let mut headers: Vec<(&str, Vec<u8>)> =
            message.headers.iter().map(|h| (h.key.as_str(), h.value.clone())).collect();
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        headers.extend([
            ("runnel-function", self.status.name().as_bytes().to_vec()),
            ("runnel-version", version.as_bytes().to_vec()),
            ("runnel-error", reason.as_bytes().to_vec()),
            ("runnel-source-topic", message.topic.as_bytes().to_vec()),
            ("runnel-source-partition", partition.into_bytes()),
            ("runnel-source-offset", offset.into_bytes()),
        ]);
        self.producer
            .publish(Event { topic: &topic, key: message.key.as_deref(), payload: message.payload.clone(), headers })
            .await?;
        self.status.count(|c| &c.dead_lettered);
        Ok(())
    }
}

/// The first 12 hex digits of a version id, for log lines.
fn short(version: &str) -> &str {
    &version[..version.len().min(12)]
}

enum Step {
    Commit,
    Stop(FunctionState),
}

fn to_wit(record: &BorrowedMessage<'_>) -> Message {
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
