//! Host configuration, read once at start from the environment.
//!
//! The variable names are Runnel's public interface (scripts, compose.yaml and
//! deployments use them), so every error names the variable at fault.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Everything the host needs to start; see README.md for each variable.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub kafka_brokers: String,
    pub mongodb_uri: String,
    pub mongodb_database: String,
    pub smtp_url: String,
    pub mail_from: String,
    pub functions_dir: Option<PathBuf>,
    /// Largest HTTP request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long start-up waits for the broker and the database.
    pub connect_timeout: Duration,
    /// The bearer token of the admin API; none: loopback clients only.
    pub admin_token: Option<String>,
    /// Largest deploy (manifest + component) the admin API accepts.
    pub max_component_bytes: usize,
    /// How often the host reads the deployments every host shares.
    pub sync_interval: Duration,
    /// Longest a capability call waits for its service (then: unavailable).
    pub capability_timeout: Duration,
    /// Where compiled components are kept between starts; none: compiled
    /// at every start.
    pub compiled_dir: Option<PathBuf>,
    /// Partitions of the topics the host creates (one host per partition
    /// at most shares a function's work).
    pub topic_partitions: i32,
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str, default: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let err = |name: &'static str, problem: String| ConfigError { name, problem };

        let http_addr = get("RUNNEL_HTTP_ADDR", "127.0.0.1:8080");
        let http_addr = http_addr.parse().map_err(|e| {
            err("RUNNEL_HTTP_ADDR", format!("'{http_addr}' is not an address like 127.0.0.1:8080 ({e})"))
        })?;

        let kafka_brokers = get("RUNNEL_KAFKA_BROKERS", "127.0.0.1:9092");
        for broker in kafka_brokers.split(',') {
            let broker = broker.trim();
            let valid = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(err(
                    "RUNNEL_KAFKA_BROKERS",
                    format!("'{broker}' is not a host:port pair (expected e.g. 127.0.0.1:9092)"),
                ));
            }
        }

        let mongodb_uri = get("RUNNEL_MONGODB_URI", "mongodb://127.0.0.1:27017");
        if !(mongodb_uri.starts_with("mongodb://") || mongodb_uri.starts_with("mongodb+srv://")) {
            return Err(err(
                "RUNNEL_MONGODB_URI",
                format!("'{mongodb_uri}' must start with mongodb:// or mongodb+srv://"),
            ));
        }
        let mongodb_database = get("RUNNEL_MONGODB_DATABASE", "runnel");
        if mongodb_database.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(err(
                "RUNNEL_MONGODB_DATABASE",
                format!("'{mongodb_database}' is not a valid database name"),
            ));
        }

        let smtp_url = get("RUNNEL_SMTP_URL", "smtp://127.0.0.1:25");
        if !["smtp://", "smtps://"].iter().any(|s| smtp_url.starts_with(s)) {
            return Err(err(
                "RUNNEL_SMTP_URL",
                format!("'{smtp_url}' must be an smtp:// or smtps:// URL, e.g. smtp://127.0.0.1:2525"),
            ));
        }
        let mail_from = get("RUNNEL_MAIL_FROM", "runnel@localhost");
        if !mail_from.contains('@') {
            return Err(err("RUNNEL_MAIL_FROM", format!("'{mail_from}' is not an e-mail address")));
        }

        let functions_dir = lookup("RUNNEL_FUNCTIONS_DIR")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from);

        let max_body = get("RUNNEL_MAX_BODY_BYTES", "1048576");
        let max_body_bytes = max_body.parse().map_err(|_| {
            err("RUNNEL_MAX_BODY_BYTES", format!("'{max_body}' is not a number of bytes"))
        })?;

        let admin_token = lookup("RUNNEL_ADMIN_TOKEN").map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(token) = &admin_token
            && (token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(err("RUNNEL_ADMIN_TOKEN", "must be at least 16 characters, without spaces".into()));
        }

        let max_component = get("RUNNEL_MAX_COMPONENT_BYTES", "67108864");
        let max_component_bytes = max_component.parse().map_err(|_| {
            err("RUNNEL_MAX_COMPONENT_BYTES", format!("'{max_component}' is not a number of bytes"))
        })?;

        // A duration in milliseconds, within `range`.
        let millis = |name: &'static str, default: &str, range: std::ops::RangeInclusive<u64>, why: &str| {
            let value = get(name, default);
            value.parse::<u64>().ok().filter(|ms| range.contains(ms)).map(Duration::from_millis).ok_or_else(|| {
                err(name, format!("'{value}' is not a number of milliseconds from {} to {}{why}", range.start(), range.end()))
            })
        };
        let sync_interval = millis("RUNNEL_SYNC_INTERVAL_MS", "500", 10..=60_000, "")?;
        let capability_timeout =
            millis("RUNNEL_CAPABILITY_TIMEOUT_MS", "5000", 10..=20_000, " (below the 30 s call deadline)")?;

        // The host's own cache (it runs the native code it finds there).
        let compiled_dir = match lookup("RUNNEL_COMPILED_DIR").map(|v| v.trim().to_string()) {
            Some(v) if v == "off" => None,
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => lookup("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| lookup("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".cache")))
                .map(|cache| cache.join("runnel").join("compiled")),
        };

        let partitions = get("RUNNEL_TOPIC_PARTITIONS", "3");
        let topic_partitions = partitions.parse::<i32>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            err("RUNNEL_TOPIC_PARTITIONS", format!("'{partitions}' is not a number of partitions from 1 to 1000"))
        })?;

        Ok(Config {
            http_addr,
            kafka_brokers,
            mongodb_uri,
            mongodb_database,
            smtp_url,
            mail_from,
            functions_dir,
            max_body_bytes,
            connect_timeout: Duration::from_secs(10),
            admin_token,
            max_component_bytes,
            sync_interval,
            capability_timeout,
            compiled_dir,
            topic_partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(c.mongodb_database, "runnel");
        assert!(c.functions_dir.is_none());
        assert_eq!(c.topic_partitions, 3);
    }

    #[test]
    fn every_malformed_setting_is_named() {
        for (name, value) in [
            ("RUNNEL_HTTP_ADDR", "localhost"),
            ("RUNNEL_KAFKA_BROKERS", "127.0.0.1"),
            ("RUNNEL_MONGODB_URI", "http://db"),
            ("RUNNEL_MONGODB_DATABASE", "a.b"),
            ("RUNNEL_SMTP_URL", "127.0.0.1:25"),
            ("RUNNEL_MAIL_FROM", "nobody"),
            ("RUNNEL_MAX_BODY_BYTES", "1MB"),
            ("RUNNEL_ADMIN_TOKEN", "short"),
            ("RUNNEL_MAX_COMPONENT_BYTES", "-1"),
            ("RUNNEL_SYNC_INTERVAL_MS", "0"),
            ("RUNNEL_CAPABILITY_TIMEOUT_MS", "60000"),
            ("RUNNEL_TOPIC_PARTITIONS", "0"),
        ] {
            let e = config(&[(name, value)]).unwrap_err();
            assert_eq!(e.name, name);
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }
}
