//! Kafka: topic creation, the producer, the trigger that feeds consumed
//! records to a deployment, and replays.
//!
//! Built on rdkafka (librdkafka), which also speaks to Kafka-compatible
//! brokers. The host creates every topic it uses before it produces to or
//! consumes from it, so it works with brokers that do not auto-create topics.

mod admin;
mod producer;
pub mod replay;
pub mod trigger;

pub use admin::Topics;
pub use producer::{Event, EventProducer};

use rdkafka::ClientConfig;

/// Settings every Runnel client shares.
fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("client.id", "runnel").set("socket.keepalive.enable", "true");
    config
}

/// The dead-letter topic of `topic`: where records a function rejected as bad
/// input are kept, with the reason in their headers.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
