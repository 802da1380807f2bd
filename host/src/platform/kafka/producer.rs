//! Publishes domain events (JSON, keyed by resource id) for the HTTP API.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
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

/// A shared, cheaply cloned producer that waits for the broker's ack.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
}

impl EventProducer {
    /// `idempotent`: the broker keeps each record once and in order, however
    /// often librdkafka retries sending it.
    pub fn new(brokers: &str, delivery_timeout: Duration, idempotent: bool) -> anyhow::Result<Self> {
        let producer = super::client_config(brokers)
            .set("acks", "all")
            .set("enable.idempotence", idempotent.to_string())
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("linger.ms", "2")
            .create()
            .with_context(|| format!("RUNNEL_KAFKA_BROKERS: cannot create a producer for '{brokers}'"))?;
        Ok(EventProducer { producer })
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
        self.producer
            .send(record, Duration::ZERO)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot publish to '{}': {e}", event.topic))?;
        Ok(())
    }
}
