//! Kafka triggers: one consumer per deployed function, feeding it records one
//! at a time and committing a record's offset only once the function is done
//! with it.
//!
//! What happens to a record depends on how the function answered:
//! - handled: commit;
//! - bad input: copy the record to `<topic>.dlq` (headers say why), then commit;
//! - retry later: run it again after a back-off (up to 30 s), as long as it takes;
//! - give up: stop this function's consumer without committing, so the record
//!   is the first one seen after a redeploy;
//! - trap or timeout: retry a few times, then dead-letter it and go on;
//! - no instance can be made: stop, as for give up.
//!
//! A dead-letter write that fails is retried (with back-off) on its own: the
//! function is not run again for it.

use std::time::Duration;

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, Headers},
};
use tokio::sync::watch;

use super::{Event, EventProducer, dead_letter_topic};
use crate::{
    functions::{Deployment, FunctionState, Registry},
    wasm::{HandlerError, Header, Message, Outcome},
};

/// How many times a trapping record is tried before it is dead-lettered.
const MAX_FAILED_ATTEMPTS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a trigger needs, handed over by the host at start.
pub struct Trigger {
    pub deployment: Deployment,
    pub brokers: String,
    pub producer: EventProducer,
    pub registry: Registry,
}

impl Trigger {
    /// Consumes until `shutdown` turns true, or the function gives up.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.deployment.manifest.name.clone();
        let consumer = match self.consumer() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(function = %name, "cannot start its consumer: {e:#}");
                self.registry.set_state(&name, FunctionState::Failed { reason: format!("{e:#}") });
                return;
            }
        };
        self.registry.set_state(&name, FunctionState::Running);
        // Next offset to read, per partition, of what this trigger committed.
        let mut committed = std::collections::BTreeMap::<(String, i32), i64>::new();
        let state = loop {
            let record = tokio::select! {
                _ = shutdown.changed() => break FunctionState::Stopped,
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
            match self.process(&record, &mut shutdown).await {
                Step::Commit => {
                    if let Err(e) = consumer.commit_message(&record, CommitMode::Async) {
                        tracing::warn!(function = %name, "commit failed (the record may be seen again): {e}");
                    }
                    committed.insert((record.topic().to_string(), record.partition()), record.offset() + 1);
                }
                Step::Stop(state) => break state,
            }
        };
        // Make sure the last asynchronous commit reached the broker, for the
        // partitions this consumer still owns (a rebalance may have moved
        // others, whose new owner may have committed further).
        let owned = consumer.assignment().unwrap_or_default();
        committed.retain(|(topic, partition), _| owned.find_partition(topic, *partition).is_some());
        if !committed.is_empty() {
            let mut position = TopicPartitionList::new();
            let result = committed
                .iter()
                .try_for_each(|((topic, partition), offset)| {
                    position.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                })
                .and_then(|()| consumer.commit(&position, CommitMode::Sync));
            if let Err(e) = result {
                tracing::warn!(function = %name, "final commit failed (records may be seen again): {e}");
            }
        }
        tracing::info!(function = %name, ?state, "trigger stopped");
        self.registry.set_state(&name, state);
    }

    fn consumer(&self) -> anyhow::Result<StreamConsumer> {
        let manifest = &self.deployment.manifest;
        let consumer: StreamConsumer = super::client_config(&self.brokers)
            .set("group.id", manifest.group())
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            // Quick group joins and failure detection.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // An idle consumer asks again after at most this long: the bound
            // on how late a new record is seen.
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[&manifest.trigger.kafka.topic])?;
        Ok(consumer)
    }

    /// Runs one record through the function until it may be committed.
    async fn process(&self, record: &BorrowedMessage<'_>, shutdown: &mut watch::Receiver<bool>) -> Step {
        let name = &self.deployment.manifest.name;
        let message = to_wit(record);
        let mut failures = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            let retry_reason = match self.deployment.function.handle(&message).await {
                Outcome::Handled => {
                    self.registry.count_handled(name);
                    return Step::Commit;
                }
                Outcome::Declined(HandlerError::BadInput(reason)) => {
                    tracing::warn!(function = %name, offset = message.offset, "bad input: {reason}");
                    return self.dead_letter_until_done(&message, &reason, shutdown).await;
                }
                Outcome::Declined(HandlerError::RetryLater(reason)) => reason,
                Outcome::Declined(HandlerError::GiveUp(reason)) => {
                    tracing::error!(function = %name, offset = message.offset, "gave up: {reason}");
                    return Step::Stop(FunctionState::Failed { reason: format!("gave up: {reason}") });
                }
                Outcome::NotStarted(e) => {
                    tracing::error!(function = %name, "cannot start: {e:#}");
                    return Step::Stop(FunctionState::Failed { reason: format!("{e:#}") });
                }
                Outcome::Failed(error) => {
                    failures += 1;
                    let reason = format!("{error:#}");
                    tracing::error!(function = %name, offset = message.offset, failures, "failed: {reason}");
                    if failures >= MAX_FAILED_ATTEMPTS {
                        let reason = format!("failed {failures} times: {reason}");
                        return self.dead_letter_until_done(&message, &reason, shutdown).await;
                    }
                    reason
                }
            };
            tracing::warn!(function = %name, offset = message.offset, ?backoff, "will retry: {retry_reason}");
            tokio::select! {
                _ = shutdown.changed() => return Step::Stop(FunctionState::Stopped),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Dead-letters `message`, retrying with back-off until it is done
    /// (then the record may be committed) or the host shuts down.
    async fn dead_letter_until_done(&self, message: &Message, reason: &str, shutdown: &mut watch::Receiver<bool>) -> Step {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.dead_letter(message, reason).await {
                Ok(()) => return Step::Commit,
                Err(e) => tracing::warn!(
                    function = %self.deployment.manifest.name, offset = message.offset, ?backoff,
                    "cannot dead-letter, will retry: {e:#}"
                ),
            }
            tokio::select! {
                _ = shutdown.changed() => return Step::Stop(FunctionState::Stopped),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> anyhow::Result<()> {
        let topic = dead_letter_topic(&message.topic);
        let mut headers: Vec<(&str, Vec<u8>)> =
            message.headers.iter().map(|h| (h.key.as_str(), h.value.clone())).collect();
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        headers.extend([
            ("runnel-function", self.deployment.manifest.name.as_bytes().to_vec()),
            ("runnel-error", reason.as_bytes().to_vec()),
            ("runnel-source-topic", message.topic.as_bytes().to_vec()),
            ("runnel-source-partition", partition.into_bytes()),
            ("runnel-source-offset", offset.into_bytes()),
        ]);
        self.producer
            .publish(Event { topic: &topic, key: message.key.as_deref(), payload: message.payload.clone(), headers })
            .await?;
        self.registry.count_dead_lettered(&self.deployment.manifest.name);
        Ok(())
    }
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
                hs.iter()
                    .map(|h| Header { key: h.key.to_string(), value: h.value.unwrap_or_default().to_vec() })
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms: record.timestamp().to_millis(),
    }
}

