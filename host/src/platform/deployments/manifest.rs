//! The deployment manifest: what triggers a function and which capabilities
//! it is granted. Anything not granted here is refused by the host.
//!
//! ```toml
//! name = "store-alert-to-email"       # must match the file / route name
//! language = "rust"                   # optional: rust, python or js; only
//!                                     # the build reads it (the host runs
//!                                     # any component)
//!
//! [trigger.kafka]
//! topic = "store-alerts-topic"
//! group = "store-alerts"              # default: the function's name
//! max-in-flight = 8                   # default 1: records of one partition
//!                                     # run at once (one key: in order)
//! max-batch = 64                      # default 1: ready records handed to one
//!                                     # call of handle-batch
//!
//! [trigger.kafka.filter]              # optional; every condition given must hold
//! key-prefix = "store-"
//! header = { name = "source", value = "api" }
//! json = { field = "storeStatus", equals = "CLOSED" }
//!
//! [trigger.kafka.retry]               # optional; these are the defaults
//! attempts = 20                       # retry-later answers before dead-lettering…
//! within = "1h"                       # …or this long after the first try
//! failures = 3                        # traps and timeouts before dead-lettering
//! backoff = "100ms"                   # first wait; doubles, with jitter…
//! max-backoff = "30s"                 # …up to this
//!
//! [reuse]                            # optional: one instance serves up to
//! max-messages = 1000                 # this many records of the function…
//! max-seconds = 60                    # …for at most this long (default: a
//!                                     # fresh instance per record)
//!
//! [capabilities.documents]
//! write = ["store_alerts"]
//! [capabilities.mail]
//! enabled = true
//! [capabilities.config.distribution-list]
//! env = "ALERT_DISTRIBUTION_LIST"
//! required = true
//! ```
//!
//! Every check is made while parsing, so an error names the key and its
//! line: `line 4: unknown field `shell`, expected `topic`, `group` or `filter``.

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::platform::{capabilities::ManifestGrants, runtime::Message};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(deserialize_with = "function_name")]
    pub name: String,
    /// What the function is written in, for `scripts/build-function`; when
    /// absent, the build tells by the folder's files.
    #[serde(default)]
    pub language: Option<Language>,
    pub trigger: Trigger,
    /// Instance reuse; none: a fresh instance for every record.
    #[serde(default)]
    pub reuse: Option<Reuse>,
    #[serde(default)]
    pub capabilities: ManifestGrants,
}

/// Opting in to instance reuse: an instance handles up to `max_messages`
/// records, for at most `max_seconds`, and is thrown away after any record
/// it did not handle (a trap, a timeout, an error answer). State a function
/// leaves in its memory is seen by the next records, so fresh instances
/// (the default) are the stronger isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Reuse {
    #[serde(deserialize_with = "at_least_one")]
    pub max_messages: u32,
    #[serde(default = "Reuse::default_seconds", deserialize_with = "at_least_one")]
    pub max_seconds: u32,
}

impl Reuse {
    fn default_seconds() -> u32 {
        60
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Python,
    #[serde(alias = "javascript")]
    Js,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub kafka: KafkaTrigger,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTrigger {
    #[serde(deserialize_with = "topic_name")]
    pub topic: String,
    /// Consumer group; defaults to the function's name.
    #[serde(default, deserialize_with = "group_name")]
    pub group: Option<String>,
    /// Records that do not match are committed without running the function.
    pub filter: Option<Filter>,
    /// How long a record is retried before it is dead-lettered.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How many records of one partition run at once: records of different
    /// keys overlap, records of one key always run one after the other, in
    /// their order (records without a key are not ordered among each
    /// other). 1, the default, runs the partition in its order.
    #[serde(default = "KafkaTrigger::one_at_a_time", rename = "max-in-flight", deserialize_with = "in_flight")]
    pub max_in_flight: u32,
    /// How many ready records of a partition (in order, of keys not running
    /// elsewhere) one call of the function's `handle-batch` may get. 1, the
    /// default, calls `handle` once per record; more needs a component that
    /// exports `handle-batch`.
    #[serde(default = "KafkaTrigger::one_at_a_time", rename = "max-batch", deserialize_with = "batch_size")]
    pub max_batch: u32,
}

impl KafkaTrigger {
    /// The most records of one partition that may run at once.
    pub const MAX_IN_FLIGHT: u32 = 256;

    fn one_at_a_time() -> u32 {
        1
    }
}

fn in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=KafkaTrigger::MAX_IN_FLIGHT).contains(&n) {
        return Err(D::Error::custom(format!("must be from 1 to {}", KafkaTrigger::MAX_IN_FLIGHT)));
    }
    Ok(n)
}

fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=crate::platform::runtime::MAX_BATCH).contains(&n) {
        return Err(D::Error::custom(format!("must be from 1 to {}", crate::platform::runtime::MAX_BATCH)));
    }
    Ok(n)
}

/// The retry budget of one record. Retries while a capability answered
/// `unavailable` (a service is down) are not counted: a record waits for
/// the service however long it takes.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RetryPolicy {
    /// `retry-later` answers before the record is dead-lettered.
    #[serde(deserialize_with = "at_least_one")]
    pub attempts: u32,
    /// Time since the first try after which a `retry-later` dead-letters.
    #[serde(with = "humantime_serde")]
    pub within: std::time::Duration,
    /// Traps and timeouts before the record is dead-lettered.
    #[serde(deserialize_with = "at_least_one")]
    pub failures: u32,
    /// The first wait; each retry doubles it, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: std::time::Duration,
    /// The longest wait.
    #[serde(with = "humantime_serde")]
    pub max_backoff: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        use std::time::Duration;
        RetryPolicy {
            attempts: 20,
            within: Duration::from_secs(3600),
            failures: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): exponential, capped,
    /// with "equal jitter" (between half and all of it) so that records
    /// retried together spread out.
    pub fn backoff(&self, retry: u32) -> std::time::Duration {
        let max = self.max_backoff.max(self.backoff);
        let full = self.backoff.saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX)).min(max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(D::Error::custom("must be at least 1"));
    }
    Ok(n)
}

/// Which records reach the function. Every condition given must hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Filter {
    /// The record's key starts with these bytes (UTF-8).
    pub key_prefix: Option<String>,
    /// The record has this header with this value.
    pub header: Option<HeaderFilter>,
    /// The payload is a JSON object whose field (a dotted path) equals a value.
    pub json: Option<JsonFilter>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFilter {
    /// `a.b.c` reaches `{"a":{"b":{"c":…}}}`.
    pub field: String,
    pub equals: serde_json::Value,
}

/// A manifest that cannot be used, with the line at fault when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ManifestError {
    pub line: Option<usize>,
    pub message: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn function_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if !valid_name(&name) || name.starts_with('.') {
        return Err(D::Error::custom(format!(
            "'{name}' is not a function name: use 1 to 100 letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(name)
}

fn topic_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let topic = String::deserialize(d)?;
    if !valid_name(&topic) || topic == "." || topic == ".." {
        return Err(D::Error::custom(format!("'{topic}' is not a valid topic name")));
    }
    Ok(topic)
}

fn group_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let group = String::deserialize(d)?;
    if group.trim().is_empty() || group.len() > 255 {
        return Err(D::Error::custom("a group name must not be empty (or longer than 255 bytes)"));
    }
    Ok(Some(group))
}

impl Manifest {
    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError {
            line: e.span().map(|span| text.get(..span.start).unwrap_or(text).matches('\n').count() + 1),
            message: e.message().trim().to_string(),
        })
    }

    pub fn group(&self) -> &str {
        self.trigger.kafka.group.as_deref().unwrap_or(&self.name)
    }
}

impl Filter {
    /// Whether `message` passes every condition of the filter.
    pub fn matches(&self, message: &Message) -> bool {
        if let Some(prefix) = &self.key_prefix
            && !message.key.as_deref().is_some_and(|k| k.starts_with(prefix.as_bytes()))
        {
            return false;
        }
        if let Some(h) = &self.header
            && !message.headers.iter().any(|m| m.key == h.name && m.value == h.value.as_bytes())
        {
            return false;
        }
        if let Some(j) = &self.json {
            let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&message.payload) else { return false };
            let found = j.field.split('.').try_fold(&payload, |value, key| value.get(key));
            let equal = match (found, &j.equals) {
                (Some(serde_json::Value::Number(a)), serde_json::Value::Number(b)) => a.as_f64() == b.as_f64(),
                (Some(a), b) => a == b,
                (None, _) => false,
            };
            if !equal {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::runtime::Header;

    const STORE_ALERT: &str = include_str!("../../../../functions/store-alert-to-email/runnel.toml");

    #[test]
    fn the_shipped_manifest_parses() {
        let m = Manifest::parse(STORE_ALERT).unwrap();
        assert_eq!(m.group(), "store-alerts");
        assert!(m.capabilities.mail.enabled);
        assert_eq!(m.capabilities.documents.write, ["store_alerts"]);
        assert!(m.capabilities.config.contains_key("distribution-list"));
        assert_eq!((m.language, m.reuse), (None, None));
        assert_eq!(m.trigger.kafka.max_in_flight, 8);
        let m = Manifest::parse("name = 'x'\nlanguage = 'python'\n[trigger.kafka]\ntopic = 't'\n[reuse]\nmax-messages = 50").unwrap();
        assert_eq!((m.language, m.reuse), (Some(Language::Python), Some(Reuse { max_messages: 50, max_seconds: 60 })));
    }

    #[test]
    fn bad_manifests_name_the_key_and_line() {
        for (text, expected) in [
            ("name = 'x'", "missing field `trigger`"),
            ("name = 'a b'\n[trigger.kafka]\ntopic = 't'", "line 1: 'a b' is not a function name"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nextra = 1", "line 4: unknown field `extra`"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.config.k]\nrequired = true", "line 4: give exactly one of"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.documents]\nwrite = ['system.users']", "line 5: 'system.users'"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.documents]\nwrite = ['runnel_versions']", "runnel_versions"),
            ("not toml", "line 1"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.config.db]\nenv = 'RUNNEL_MONGODB_URI'", "setting of the host"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.shell]\nenabled = true", "line 4: unknown field `shell`"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.mail]\nenabled = 'yes'", "line 5: invalid type"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 'a/b'", "line 3: 'a/b' is not a valid topic name"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\ngroup = ' '", "line 4: a group name must not be empty"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[trigger.kafka.filter]\nkey = 'a'", "line 5: unknown field `key`"),
            ("name = 'x'\nlanguage = 'cobol'\n[trigger.kafka]\ntopic = 't'", "line 2: unknown variant `cobol`"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[reuse]\nmax-messages = 0", "line 5: must be at least 1"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[reuse]\nmax-seconds = 5", "missing field `max-messages`"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nmax-in-flight = 0", "line 4: must be from 1 to 256"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nmax-in-flight = 1000", "must be from 1 to 256"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nmax-batch = 0", "line 4: must be from 1 to 1000"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nmax-batch = 1001", "must be from 1 to 1000"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nmax-batch = 'all'", "line 4"),
        ] {
            let e = Manifest::parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    fn message(key: &str, header: (&str, &str), payload: &str) -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: vec![Header { key: header.0.into(), value: header.1.as_bytes().to_vec() }],
            timestamp_ms: None,
        }
    }

    #[test]
    fn filters_match_key_header_and_json_field() {
        let m = Manifest::parse(
            "name = 'x'\n[trigger.kafka]\ntopic = 't'\n[trigger.kafka.filter]\nkey-prefix = 'eu-'\n\
             header = { name = 'src', value = 'api' }\njson = { field = 'store.status', equals = 'CLOSED' }",
        )
        .unwrap();
        let f = m.trigger.kafka.filter.unwrap();
        let closed = r#"{"store":{"status":"CLOSED"}}"#;
        assert!(f.matches(&message("eu-1", ("src", "api"), closed)));
        assert!(!f.matches(&message("us-1", ("src", "api"), closed)));
        assert!(!f.matches(&message("eu-1", ("src", "batch"), closed)));
        assert!(!f.matches(&message("eu-1", ("src", "api"), r#"{"store":{"status":"OPEN"}}"#)));
        assert!(!f.matches(&message("eu-1", ("src", "api"), "not json")));
        let n = Manifest::parse("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[trigger.kafka.filter]\njson = { field = 'n', equals = 3 }")
            .unwrap();
        assert!(n.trigger.kafka.filter.unwrap().matches(&message("k", ("a", "b"), r#"{"n": 3.0}"#)));
    }
}
