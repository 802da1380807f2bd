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


use std::sync::Arc;

use rdkafka::{
    ClientConfig,
    config::{FromClientConfig, FromClientConfigAndContext},
};

use crate::platform::redact;

/// The Kafka cluster and how to talk to it: its bootstrap brokers and the
/// librdkafka properties the operator set (`RUNNEL_KAFKA_<PROPERTY>`:
/// security protocol, SASL, TLS…). Every client the host makes (the
/// producers, each trigger's consumer, the admin client, replays) is made
/// here, so each gets the same properties. Cheap to clone; its `Debug` hides
/// secret values.
#[derive(Clone)]
pub struct Cluster {
    brokers: Arc<str>,
    properties: Arc<[Property]>,
}

/// One librdkafka property set by the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    /// The environment variable it came from, for error messages.
    pub variable: String,
    pub value: String,
}

impl std::fmt::Debug for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if redact::is_secret(&self.name) { redact::HIDDEN } else { &self.value };
        write!(f, "{}={value}", self.name)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("brokers", &self.brokers).field("properties", &self.properties).finish()
    }
}

/// Properties Runnel sets itself, that an operator's setting would break.
const OWN_PROPERTIES: [(&str, &str); 5] = [
    ("bootstrap.servers", "set RUNNEL_KAFKA_BROKERS instead"),
    ("group.id", "each function's manifest names its group"),
    ("enable.auto.commit", "the trigger commits what was handled, and only that"),
    ("enable.auto.offset.store", "the trigger stores an offset once its record is handled"),
    ("enable.idempotence", "the outbox relay needs its idempotent producer"),
];

impl Property {
    /// The property an environment variable sets, if it is one of
    /// `RUNNEL_KAFKA_<PROPERTY>` (not `RUNNEL_KAFKA_BROKERS`): the rest of its
    /// name lower-cased, `_` for `.` (`RUNNEL_KAFKA_SASL_MECHANISM` sets
    /// `sasl.mechanism`). Checked against librdkafka's own list and value
    /// rules; the error names the variable and hides secret values.
    pub fn from_variable(variable: &str, value: &str) -> Option<Result<Property, String>> {
        let rest = variable.strip_prefix("RUNNEL_KAFKA_")?;
        if rest == "BROKERS" {
            return None;
        }
        let name = rest.to_ascii_lowercase().replace('_', ".");
        let secret = redact::is_secret(&name);
        let shown = if secret { redact::HIDDEN.to_string() } else { format!("'{value}'") };
        if let Some((_, why)) = OWN_PROPERTIES.iter().find(|(own, _)| *own == name) {
            return Some(Err(format!("{name} is Runnel's to set: {why}")));
        }
        if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            return Some(Err("not a librdkafka property (upper-case letters, digits and _ after RUNNEL_KAFKA_)".into()));
        }
        // librdkafka checks the name and the value's form when it is set.
        let checked = ClientConfig::new().set(&name, value).create_native_config().map(drop);
        Some(match checked {
            Ok(()) => Ok(Property { name, variable: variable.to_string(), value: value.to_string() }),
            Err(e) => {
                let mut reason = e.to_string();
                if secret && !value.is_empty() {
                    reason = reason.replace(value, redact::HIDDEN);
                }
                Err(format!("librdkafka refuses {name} = {shown}: {reason}"))
            }
        })
    }
}

impl Cluster {
    pub fn new(brokers: &str, properties: Vec<Property>) -> Self {
        Cluster { brokers: brokers.into(), properties: properties.into() }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Settings every Runnel client shares; the operator's properties are
    /// applied last, when the client is made.
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers.as_ref()).set("client.id", "runnel").set("socket.keepalive.enable", "true");
        config
    }

    /// `config` with the operator's properties over it.
    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for p in self.properties.iter() {
            config.set(&p.name, &p.value);
        }
        config
    }

    fn create<T: FromClientConfig>(&self, config: ClientConfig) -> anyhow::Result<T> {
        self.finish(config).create().map_err(|e| self.refused(e))
    }

    fn create_with<C: rdkafka::ClientContext, T: FromClientConfigAndContext<C>>(
        &self,
        config: ClientConfig,
        context: C,
    ) -> anyhow::Result<T> {
        self.finish(config).create_with_context(context).map_err(|e| self.refused(e))
    }

    /// Which settings were in effect, for errors: the brokers and the
    /// variables of the operator's properties.
    pub fn settings(&self) -> String {
        let mut settings = format!("RUNNEL_KAFKA_BROKERS='{}'", self.brokers);
        for p in self.properties.iter() {
            settings.push_str(", ");
            settings.push_str(&p.variable);
        }
        settings
    }

    /// librdkafka refused to make a client with these settings.
    fn refused(&self, e: rdkafka::error::KafkaError) -> anyhow::Error {
        let mut reason = e.to_string();
        for p in self.properties.iter().filter(|p| redact::is_secret(&p.name) && !p.value.is_empty()) {
            reason = reason.replace(&p.value, redact::HIDDEN);
        }
        anyhow::anyhow!("cannot make a Kafka client with {}: {reason}", self.settings())
    }
}

/// The dead-letter topic of `topic`: where records a function rejected as bad
/// input are kept, with the reason in their headers.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
