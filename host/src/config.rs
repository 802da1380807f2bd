//! Host configuration, read once at start from the environment.
//!
//! The variable names are Runnel's public interface (scripts, compose.yaml and
//! deployments use them), so every error names the variable at fault.

use std::{borrow::Cow, collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use crate::platform::{auth::OidcSettings, deployments::TrustedKeys, kafka::Property, redact};

/// Everything the host needs to start; see README.md for each variable.
/// Its `Debug` hides the passwords its URLs and properties may hold.
#[derive(Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub kafka_brokers: String,
    /// librdkafka properties from `RUNNEL_KAFKA_<PROPERTY>`, for every client.
    pub kafka_properties: Vec<Property>,
    pub mongodb_uri: String,
    pub mongodb_database: String,
    pub smtp_url: String,
    pub mail_from: String,
    pub functions_dir: Option<PathBuf>,
    /// Largest HTTP request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long start-up waits for the broker and the database.
    pub connect_timeout: Duration,
    /// The bearer token of the admin API; none (and no issuer): loopback
    /// clients only.
    pub admin_token: Option<String>,
    /// The OpenID Connect issuer whose tokens the API accepts; none: the
    /// data routes are open (loopback only, unless `insecure`).
    pub oidc: Option<OidcSettings>,
    /// `RUNNEL_INSECURE=1`: serve an open API on a non-loopback address.
    pub insecure: bool,
    /// Keys one of which must have signed every version (`RUNNEL_TRUSTED_KEYS`).
    pub trusted_keys: Option<TrustedKeys>,
    /// Largest deploy (manifest + component) the admin API accepts.
    pub max_component_bytes: usize,
    /// How often the host reads the deployments every host shares.
    pub sync_interval: Duration,
    /// Longest a capability call waits for its service (then: unavailable).
    pub capability_timeout: Duration,
    /// Longest a data API request waits for its answer (then: 503).
    pub request_timeout: Duration,
    /// Where compiled components are kept between starts; none: compiled
    /// at every start.
    pub compiled_dir: Option<PathBuf>,
    /// Partitions of the topics the host creates (one host per partition
    /// at most shares a function's work).
    pub topic_partitions: i32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_properties", &self.kafka_properties)
            .field("mongodb_uri", &redact::url(&self.mongodb_uri))
            .field("mongodb_database", &self.mongodb_database)
            .field("smtp_url", &redact::url(&self.smtp_url))
            .field("mail_from", &self.mail_from)
            .field("functions_dir", &self.functions_dir)
            .field("admin_token", &self.admin_token.as_ref().map(|_| redact::HIDDEN))
            .field("oidc", &self.oidc)
            .field("insecure", &self.insecure)
            .field("trusted_keys", &self.trusted_keys)
            .field("request_timeout", &self.request_timeout)
            .field("compiled_dir", &self.compiled_dir)
            .field("topic_partitions", &self.topic_partitions)
            .finish_non_exhaustive()
    }
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    pub name: Cow<'static, str>,
    pub problem: String,
}

impl Config {
    /// Reads the process environment (variables that are not UTF-8 are
    /// not Runnel's).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    /// Reads settings from `vars` (the environment, or a list in tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().collect();
        let lookup = |name: &str| vars.get(name).cloned();
        let get = |name: &'static str, default: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let err = |name: &'static str, problem: String| ConfigError { name: name.into(), problem };

        let http_addr = get("RUNNEL_HTTP_ADDR", "127.0.0.1:8080");
        let http_addr: SocketAddr = http_addr.parse().map_err(|e| {
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

        // Sorted, so that the first bad one is named whatever the environment's order.
        let mut kafka_properties = Vec::new();
        let mut kafka_vars: Vec<(&String, &String)> = vars.iter().collect();
        kafka_vars.sort();
        for (variable, value) in kafka_vars {
            match Property::from_variable(variable, value.trim()) {
                None => {}
                Some(Ok(property)) => kafka_properties.push(property),
                Some(Err(problem)) => return Err(ConfigError { name: variable.clone().into(), problem }),
            }
        }

        let mongodb_uri = get("RUNNEL_MONGODB_URI", "mongodb://127.0.0.1:27017");
        if !(mongodb_uri.starts_with("mongodb://") || mongodb_uri.starts_with("mongodb+srv://")) {
            return Err(err(
                "RUNNEL_MONGODB_URI",
                format!("'{}' must start with mongodb:// or mongodb+srv://", redact::url(&mongodb_uri)),
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
                format!("'{}' must be an smtp:// or smtps:// URL, e.g. smtp://127.0.0.1:2525", redact::url(&smtp_url)),
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

        let oidc = match lookup("RUNNEL_OIDC_ISSUER").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            None => {
                for name in ["RUNNEL_OIDC_AUDIENCE", "RUNNEL_OIDC_DISCOVERY_URL"] {
                    if lookup(name).is_some_and(|v| !v.trim().is_empty()) {
                        return Err(err(name, "is set but RUNNEL_OIDC_ISSUER is not".into()));
                    }
                }
                None
            }
            Some(issuer) => {
                if !is_http_url(&issuer) {
                    return Err(err("RUNNEL_OIDC_ISSUER", format!("'{issuer}' is not an http:// or https:// URL")));
                }
                let audience = get("RUNNEL_OIDC_AUDIENCE", "");
                if audience.is_empty() {
                    return Err(err(
                        "RUNNEL_OIDC_AUDIENCE",
                        "must be set with RUNNEL_OIDC_ISSUER: the audience (`aud`) tokens for this API carry".into(),
                    ));
                }
                let discovery_url = lookup("RUNNEL_OIDC_DISCOVERY_URL").map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
                if let Some(url) = &discovery_url
                    && !is_http_url(url)
                {
                    return Err(err("RUNNEL_OIDC_DISCOVERY_URL", format!("'{url}' is not an http:// or https:// URL")));
                }
                let roles_claim = get("RUNNEL_OIDC_ROLES_CLAIM", "roles");
                if roles_claim.split('.').any(str::is_empty) {
                    return Err(err("RUNNEL_OIDC_ROLES_CLAIM", format!("'{roles_claim}' is not a claim name or dotted path")));
                }
                let role = |name: &'static str, default: &str| {
                    let role = get(name, default);
                    if role.contains(char::is_whitespace) {
                        Err(err(name, format!("'{role}' is not a role name (no spaces)")))
                    } else {
                        Ok(role)
                    }
                };
                Some(OidcSettings {
                    issuer,
                    audience,
                    discovery_url,
                    roles_claim,
                    write_role: role("RUNNEL_OIDC_WRITE_ROLE", "ROLE_USER")?,
                    admin_role: role("RUNNEL_OIDC_ADMIN_ROLE", "ROLE_ADMIN")?,
                })
            }
        };
        let insecure = match get("RUNNEL_INSECURE", "0").as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            other => return Err(err("RUNNEL_INSECURE", format!("'{other}' is not 1 or 0"))),
        };
        if oidc.is_none() && !insecure && !http_addr.ip().is_loopback() {
            return Err(err(
                "RUNNEL_HTTP_ADDR",
                format!(
                    "{http_addr} is not a loopback address, and without RUNNEL_OIDC_ISSUER the API would be open to \
                     anyone who can reach it; set RUNNEL_OIDC_ISSUER (and RUNNEL_OIDC_AUDIENCE), or RUNNEL_INSECURE=1 \
                     to serve it open anyway"
                ),
            ));
        }

        let trusted_keys = match lookup("RUNNEL_TRUSTED_KEYS").filter(|v| !v.trim().is_empty()) {
            Some(keys) => Some(TrustedKeys::parse(&keys).map_err(|e| err("RUNNEL_TRUSTED_KEYS", e))?),
            None => None,
        };

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
        let request_timeout = millis("RUNNEL_REQUEST_TIMEOUT_MS", "30000", 100..=600_000, "")?;

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
            kafka_properties,
            mongodb_uri,
            mongodb_database,
            smtp_url,
            mail_from,
            functions_dir,
            max_body_bytes,
            connect_timeout: Duration::from_secs(10),
            admin_token,
            oidc,
            insecure,
            trusted_keys,
            max_component_bytes,
            sync_interval,
            capability_timeout,
            request_timeout,
            compiled_dir,
            topic_partitions,
        })
    }
}

fn is_http_url(url: &str) -> bool {
    url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.contains('@')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
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
            ("RUNNEL_OIDC_ISSUER", "keycloak/realms/runnel"),
            ("RUNNEL_OIDC_AUDIENCE", "runnel"),
            ("RUNNEL_INSECURE", "yes"),
            ("RUNNEL_TRUSTED_KEYS", "not-a-key"),
        ] {
            let e = config(&[(name, value)]).unwrap_err();
            assert_eq!(e.name, name);
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }

    #[test]
    fn kafka_properties_come_from_their_variables() {
        let c = config(&[
            ("RUNNEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("RUNNEL_KAFKA_SASL_MECHANISM", "PLAIN"),
            ("RUNNEL_KAFKA_SASL_PASSWORD", "hunter2-hunter2"),
            ("RUNNEL_KAFKA_BROKERS", "k:9092"),
        ])
        .unwrap();
        let set: Vec<(&str, &str)> = c.kafka_properties.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect();
        assert_eq!(set, [("sasl.mechanism", "PLAIN"), ("sasl.password", "hunter2-hunter2"), ("security.protocol", "SASL_PLAINTEXT")]);
        let shown = format!("{:?}", c.kafka_properties);
        assert!(!shown.contains("hunter2") && shown.contains("sasl.password=***"), "{shown}");
    }

    #[test]
    fn a_bad_kafka_property_is_named_and_its_secret_kept() {
        for (name, value, says) in [
            ("RUNNEL_KAFKA_NO_SUCH_THING", "1", "no.such.thing"),
            ("RUNNEL_KAFKA_SESSION_TIMEOUT_MS", "soon", "session.timeout.ms"),
            ("RUNNEL_KAFKA_GROUP_ID", "mine", "manifest"),
            ("RUNNEL_KAFKA_ENABLE_AUTO_COMMIT", "true", "commits what was handled"),
            ("RUNNEL_KAFKA_security_protocol", "SSL", "upper-case"),
            ("RUNNEL_KAFKA_SSL_KEY_PASSWORD_TYPO", "hunter2-hunter2", "ssl.key.password.typo"),
        ] {
            let e = config(&[(name, value)]).unwrap_err();
            assert_eq!(e.name, name);
            let text = e.to_string();
            assert!(text.starts_with(name) && text.contains(says), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn debug_hides_the_secrets() {
        let c = config(&[
            ("RUNNEL_SMTP_URL", "smtp://mailer:hunter2@mail"),
            ("RUNNEL_MONGODB_URI", "mongodb://app:hunter2@db"),
            ("RUNNEL_ADMIN_TOKEN", "hunter2-hunter2-hunter2"),
            ("RUNNEL_KAFKA_SASL_PASSWORD", "hunter2"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("mailer:***@mail"), "{shown}");
    }

    #[test]
    fn passwords_in_urls_stay_out_of_errors() {
        let e = config(&[("RUNNEL_SMTP_URL", "http://mailer:hunter2@mail")]).unwrap_err();
        assert!(e.to_string().contains("mailer:***@mail") && !e.to_string().contains("hunter2"), "{e}");
        let e = config(&[("RUNNEL_MONGODB_URI", "mysql://app:hunter2@db")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn an_issuer_needs_an_audience_and_sets_the_roles() {
        let e = config(&[("RUNNEL_OIDC_ISSUER", "http://127.0.0.1:8180/realms/runnel")]).unwrap_err();
        assert_eq!(e.name, "RUNNEL_OIDC_AUDIENCE");
        let c = config(&[
            ("RUNNEL_OIDC_ISSUER", "http://127.0.0.1:8180/realms/runnel"),
            ("RUNNEL_OIDC_AUDIENCE", "runnel"),
            ("RUNNEL_OIDC_ROLES_CLAIM", "realm_access.roles"),
        ])
        .unwrap();
        let oidc = c.oidc.unwrap();
        assert_eq!(oidc.discovery_url(), "http://127.0.0.1:8180/realms/runnel/.well-known/openid-configuration");
        assert_eq!((oidc.roles_claim.as_str(), oidc.write_role.as_str(), oidc.admin_role.as_str()), ("realm_access.roles", "ROLE_USER", "ROLE_ADMIN"));
        assert_eq!(config(&[("RUNNEL_OIDC_ROLES_CLAIM", "x"), ("RUNNEL_OIDC_ISSUER", "https://id.example/"), ("RUNNEL_OIDC_AUDIENCE", "a"), ("RUNNEL_OIDC_WRITE_ROLE", "A B")]).unwrap_err().name, "RUNNEL_OIDC_WRITE_ROLE");
        assert_eq!(config(&[("RUNNEL_OIDC_AUDIENCE", "runnel")]).unwrap_err().name, "RUNNEL_OIDC_AUDIENCE");
    }

    #[test]
    fn an_open_api_listens_on_loopback_only_unless_told_otherwise() {
        let e = config(&[("RUNNEL_HTTP_ADDR", "0.0.0.0:8080")]).unwrap_err();
        assert_eq!(e.name, "RUNNEL_HTTP_ADDR");
        assert!(e.problem.contains("RUNNEL_INSECURE=1") && e.problem.contains("RUNNEL_OIDC_ISSUER"), "{e}");
        assert!(config(&[("RUNNEL_HTTP_ADDR", "0.0.0.0:8080"), ("RUNNEL_INSECURE", "1")]).unwrap().insecure);
        let secured = config(&[
            ("RUNNEL_HTTP_ADDR", "0.0.0.0:8080"),
            ("RUNNEL_OIDC_ISSUER", "https://id.example/realms/r"),
            ("RUNNEL_OIDC_AUDIENCE", "runnel"),
        ]);
        assert!(secured.is_ok());
        assert!(config(&[("RUNNEL_HTTP_ADDR", "[::1]:8080")]).is_ok());
    }
}
