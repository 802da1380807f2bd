//! Publishes domain events (JSON, keyed by resource id) for the HTTP API.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
};
use serde::Serialize;

/// One record to publish.
pub struct Event<'a> {
    pub topic: &'a str,
    /// None for a record without a key.
    pub key: Option<&'a [u8]>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Event<'a> {
    /// A JSON event with the `content-type: application/json` header.
    pub fn json(topic: &'a str, key: &'a str, body: &impl Serialize) -> Self {
        Event {
            topic,
            key: Some(key.as_bytes()),
            payload: serde_json::to_vec(body).expect("domain events serialize to JSON"),
            headers: vec![("content-type", b"application/json".to_vec())],
        }
    }
}

/// Errors after which an idempotent producer's id and sequence are no good
/// any more: every later record would fail the same way.
const PRODUCER_STATE_LOST: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::ProducerFenced,
    RDKafkaErrorCode::InvalidProducerEpoch,
    RDKafkaErrorCode::UnknownProducerId,
    RDKafkaErrorCode::OutOfOrderSequenceNumber,
    RDKafkaErrorCode::InvalidProducerIdMapping,
];

/// A shared, cheaply cloned producer that waits for the broker's ack.
///
/// An idempotent producer that hits a fatal error (e.g. the broker fenced its
/// producer id after an outage) can send nothing more: it is replaced by a
/// new one, and the failed publish is reported so that its caller retries.
#[derive(Clone)]
pub struct EventProducer {
    current: Arc<RwLock<FutureProducer>>,
    config: Arc<ClientConfig>,
}

impl EventProducer {
    /// `idempotent`: the broker keeps each record once and in order, however
    /// often librdkafka retries sending it.
    pub fn new(cluster: &super::Cluster, delivery_timeout: Duration, idempotent: bool) -> anyhow::Result<Self> {
        let mut config = cluster.config();
        config
            .set("acks", "all")
            .set("enable.idempotence", idempotent.to_string())
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("linger.ms", "2");
        let config = cluster.finish(config);
        let producer: FutureProducer = config.create().map_err(|e| cluster.refused(e))?;
        Ok(EventProducer { current: Arc::new(RwLock::new(producer)), config: Arc::new(config) })
    }

    fn producer(&self) -> FutureProducer {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes `event` and waits until the broker has it.
    pub async fn publish(&self, event: Event<'_>) -> anyhow::Result<()> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &event.headers {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let mut record = FutureRecord::to(event.topic).payload(&event.payload).headers(headers);
        if let Some(key) = event.key {
            record = record.key(key);
        }
        let producer = self.producer();
        let sent = producer.send(record, Duration::ZERO).await;
        if let Err((e, _)) = sent {
            if let Some((code, reason)) = producer.client().fatal_error() {
                self.replace(&producer, &format!("{code:?}: {reason}"));
            } else if let KafkaError::MessageProduction(code) = &e
                && PRODUCER_STATE_LOST.contains(code)
            {
                self.replace(&producer, &format!("{code:?}"));
            }
            anyhow::bail!("cannot publish to '{}': {e}", event.topic);
        }
        Ok(())
    }

    /// Replaces `failed` (unless another publish already did).
    fn replace(&self, failed: &FutureProducer, reason: &str) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!("the producer failed for good ({reason}); using a new one");
                *current = fresh;
            }
            Err(e) => tracing::error!("the producer failed for good ({reason}) and cannot be replaced: {e}"),
        }
    }
}
