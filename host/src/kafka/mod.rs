//! Kafka runtime: topic creation, the event producer used by the HTTP API,
//! and the triggers that feed consumed records to functions.
//!
//! Built on rdkafka (librdkafka), which also speaks to Kafka-compatible
//! brokers. The host creates every topic it uses at start, so it works with
//! brokers that do not auto-create topics.

mod admin;
mod producer;
pub mod trigger;

pub use admin::ensure_topics;
pub use producer::{Event, EventProducer};

use rdkafka::ClientConfig;

/// Settings every Runnel client shares.
fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "runnel")
        .set("socket.keepalive.enable", "true");
    config
}

/// The dead-letter topic of `topic`: where records a function rejected as bad
/// input are kept, with the reason in their headers.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
