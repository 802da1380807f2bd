//! Replay: running records again through a function's running version, on
//! request (`POST /admin/functions/{name}/replay`, `runnel replay`).
//!
//! - **From the dead-letter topic** (optionally only records dead-lettered
//!   since a time): each of the function's dead letters is run with its
//!   original topic, partition, offset and headers, so the journal applies:
//!   calls its earlier tries made are answered from it, not done again. A
//!   dead letter replayed and handled is remembered, so replaying again
//!   skips it.
//! - **From an offset or a time** of the function's topic: the records from
//!   there up to the group's committed offset (those the trigger has already
//!   been through) are run again; the trigger keeps running and handles what
//!   comes after. A record handled within the journal's retention (an hour)
//!   is answered from the journal: its effects still happen once.
//!
//! A replayed record is run once; its outcome is counted (and nothing is
//! dead-lettered again): a record that is still refused can be replayed
//! again later. A running function's group offsets are not moved.
//!
//! An **undeployed** function's group offsets are moved instead
//! ([`move_offsets`]): it re-runs the topic from that point once it is
//! deployed again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use serde::Serialize;

use super::{Cluster, dead_letter_topic};
use crate::platform::{
    deployments::{Deployment, Manifest},
    journal::{Journal, KEPT_DEAD_LETTERED, RecordKey},
    runtime::{Message, Outcome},
};

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    /// The function's dead letters, all or those written since a time (ms).
    DeadLetters { since_ms: Option<i64> },
    /// The function's topic, from this offset in every partition.
    Offset(i64),
    /// The function's topic, from the first record at or after this time (ms).
    Time(i64),
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// The topic read.
    pub topic: String,
    /// Records run through the function.
    pub replayed: u64,
    /// How they ended: `ok`, `bad-input`, `retry-later`, `give-up`, `trap`, `not-started`.
    pub outcomes: BTreeMap<String, u64>,
    /// Of those run, how many had calls answered from the journal.
    pub answered_from_journal: u64,
    /// Dead letters skipped: replayed and handled before.
    pub skipped: u64,
    /// Dead letters of other functions, or without their origin, left alone.
    pub ignored: u64,
    /// For an undeployed function: the offset its group was moved to, by
    /// partition; it starts there when deployed again.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<i32, i64>,
}

/// Moves the committed offsets of `manifest`'s group to `from` (an offset
/// or a time) in every partition of its topic; for a function that runs
/// nowhere (committing for a group with members would be overwritten by them).
pub async fn move_offsets(manifest: &Manifest, cluster: &Cluster, from: ReplayFrom, timeout: Duration) -> anyhow::Result<ReplayReport> {
    let topic = manifest.trigger.kafka.topic.clone();
    let mut config = cluster.config();
    config.set("group.id", manifest.group()).set("enable.auto.commit", "false");
    let consumer: StreamConsumer = cluster.create(config)?;
    let mut report = ReplayReport { topic: topic.clone(), ..ReplayReport::default() };
    let partitions = partitions_of(&consumer, &topic, timeout)?;
    let by_time = match from {
        ReplayFrom::Time(t) => offsets_at(&consumer, &topic, &partitions, t, timeout)?,
        ReplayFrom::Offset(_) => HashMap::new(),
        ReplayFrom::DeadLetters { .. } => bail!("dead letters are replayed through a running version: deploy the function first"),
    };
    let mut list = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, timeout).context("cannot read the topic's offsets")?;
        let to = match (from, by_time.get(&p)) {
            (ReplayFrom::Offset(n), _) => n.clamp(low, high),
            (_, Some(Offset::Offset(o))) => (*o).clamp(low, high),
            _ => high,
        };
        list.add_partition_offset(&topic, p, Offset::Offset(to))?;
        report.moved.insert(p, to);
    }
    consumer.commit(&list, rdkafka::consumer::CommitMode::Sync).context("cannot move the group's offsets")?;
    tracing::info!(function = %manifest.name, group = manifest.group(), moved = ?report.moved, "group offsets moved");
    Ok(report)
}

fn partitions_of(consumer: &StreamConsumer, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("cannot read the partitions of '{topic}'"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("the topic '{topic}' has no partitions");
    }
    Ok(partitions)
}

/// The first offset at or after `time_ms`, by partition.
fn offsets_at(consumer: &StreamConsumer, topic: &str, partitions: &[i32], time_ms: i64, timeout: Duration) -> anyhow::Result<HashMap<i32, Offset>> {
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(topic, *p, Offset::Offset(time_ms))?;
    }
    let found = consumer.offsets_for_times(list, timeout).context("cannot find offsets for the time")?;
    Ok(found.elements().iter().map(|e| (e.partition(), e.offset())).collect())
}

/// Replays `from` through `deployment` (the function's running version).
pub async fn replay(
    deployment: &Deployment,
    cluster: &Cluster,
    journal: &Journal,
    from: ReplayFrom,
    timeout: Duration,
) -> anyhow::Result<ReplayReport> {
    let manifest = &deployment.manifest;
    let name: Arc<str> = Arc::from(manifest.name.as_str());
    let dead_letters = matches!(from, ReplayFrom::DeadLetters { .. });
    let topic =
        if dead_letters { dead_letter_topic(&manifest.trigger.kafka.topic) } else { manifest.trigger.kafka.topic.clone() };
    // Never subscribes, so it joins no group; the group's id only lets it
    // read the group's committed offsets.
    let mut config = cluster.config();
    config
        .set("group.id", manifest.group())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: StreamConsumer = cluster.create(config)?;

    let partitions = partitions_of(&consumer, &topic, timeout)?;
    let mut committed = HashMap::new();
    if !dead_letters {
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(&topic, *p);
        }
        let offsets = consumer.committed_offsets(list, timeout).context("cannot read the group's committed offsets")?;
        for element in offsets.elements() {
            if let Offset::Offset(o) = element.offset() {
                committed.insert(element.partition(), o);
            }
        }
    }
    let starting_time = match from {
        ReplayFrom::DeadLetters { since_ms: Some(t) } | ReplayFrom::Time(t) => Some(t),
        _ => None,
    };
    let by_time = match starting_time {
        Some(t) => offsets_at(&consumer, &topic, &partitions, t, timeout)?,
        None => HashMap::new(),
    };

    // Per partition: from where, up to (not including) which offset.
    let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, timeout).context("cannot read the topic's offsets")?;
        let start = match (from, by_time.get(&p)) {
            (ReplayFrom::Offset(n), _) => n.max(low),
            (_, Some(Offset::Offset(o))) => (*o).max(low),
            (_, Some(Offset::End)) => high,
            _ => low,
        };
        let end = if dead_letters { high } else { committed.get(&p).copied().unwrap_or(low).min(high) };
        if start < end {
            ranges.insert(p, (start, end));
            assignment.add_partition_offset(&topic, p, Offset::Offset(start))?;
        }
    }
    let mut report = ReplayReport { topic: topic.clone(), ..ReplayReport::default() };
    if ranges.is_empty() {
        return Ok(report);
    }
    consumer.assign(&assignment).context("cannot read the topic")?;

    while !ranges.is_empty() {
        let record = match tokio::time::timeout(timeout, consumer.recv()).await {
            Ok(record) => record.context("cannot read the topic")?,
            Err(_) => {
                // Nothing more: a range may end in offsets that hold no
                // record (compacted, transaction markers).
                let position = consumer.position().context("cannot read the consumer's position")?;
                for element in position.elements() {
                    if let (Offset::Offset(at), Some(&(_, end))) = (element.offset(), ranges.get(&element.partition()))
                        && at >= end
                    {
                        ranges.remove(&element.partition());
                    }
                }
                if ranges.is_empty() {
                    break;
                }
                bail!("the broker sent nothing for {timeout:?} before the end; replayed so far: {report:?}");
            }
        };
        let (p, offset) = (record.partition(), record.offset());
        let Some(&(_, end)) = ranges.get(&p) else { continue };
        if offset >= end {
            ranges.remove(&p);
            continue;
        }
        if offset + 1 >= end {
            ranges.remove(&p);
        }
        let message = super::trigger::to_wit(&record);
        let (message, key_timestamp, dead_letter) = if dead_letters {
            match original(&message, &name) {
                Some((original, key_timestamp)) => {
                    // Dead letters written before timestamps were part of
                    // the keys (no source timestamp) are remembered without.
                    let at = key_timestamp.and(message.timestamp_ms);
                    if journal.replayed_before(&name, p, offset, at).await? {
                        report.skipped += 1;
                        continue;
                    }
                    (original, key_timestamp, Some((p, offset, at)))
                }
                None => {
                    report.ignored += 1;
                    continue;
                }
            }
        } else {
            let timestamp = message.timestamp_ms;
            (message, timestamp, None)
        };
        let event_id = header(&message, RecordKey::EVENT_ID_HEADER).map(String::from);
        let key = RecordKey::new(message.topic.as_str(), message.partition, message.offset, event_id.as_deref()).at(key_timestamp);
        let calls = journal.calls(name.clone(), key, false, None);
        let outcome = deployment.function.run(&message, &calls).await.outcome;
        let stats = calls.stats().await;
        report.replayed += 1;
        if stats.replayed > 0 {
            report.answered_from_journal += 1;
        }
        *report.outcomes.entry(outcome.kind().to_string()).or_default() += 1;
        tracing::info!(
            function = %name, topic = %message.topic, partition = message.partition, offset = message.offset,
            outcome = outcome.kind(), "replayed"
        );
        if matches!(outcome, Outcome::Handled) {
            calls.handled().await;
            if let Some((p, offset, at)) = dead_letter {
                journal.mark_replayed(&name, p, offset, at).await?;
            }
        } else {
            calls.unhandled(KEPT_DEAD_LETTERED).await;
        }
    }
    Ok(report)
}

fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message.headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(&h.value).ok())
}

/// The record a dead letter of `function` was, with its own coordinates,
/// timestamp and headers, and the timestamp of its journal's key; `None`
/// for another function's, or one without its origin.
fn original(dead_letter: &Message, function: &str) -> Option<(Message, Option<i64>)> {
    if header(dead_letter, "runnel-function")? != function {
        return None;
    }
    let topic = header(dead_letter, "runnel-source-topic")?.to_string();
    let partition = header(dead_letter, "runnel-source-partition")?.parse().ok()?;
    let offset = header(dead_letter, "runnel-source-offset")?.parse().ok()?;
    // Dead letters written before their records' timestamps were part of
    // the journal's keys have none, and their journals no timestamp.
    let timestamp_ms = header(dead_letter, "runnel-source-timestamp").and_then(|at| at.parse().ok());
    const ADDED: &[&str] = &[
        "runnel-function",
        "runnel-version",
        "runnel-error",
        "runnel-attempts",
        "runnel-source-topic",
        "runnel-source-partition",
        "runnel-source-offset",
        "runnel-source-timestamp",
    ];
    let headers = dead_letter.headers.iter().filter(|h| !ADDED.contains(&h.key.as_str())).cloned().collect();
    let original = Message { topic, partition, offset, timestamp_ms: timestamp_ms.or(dead_letter.timestamp_ms), headers, ..dead_letter.clone() };
    Some((original, timestamp_ms))
}
