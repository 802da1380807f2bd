//! The deployment manifest: what triggers a function and which capabilities
//! it is granted. Anything not granted here is refused by the host.
//!
//! ```toml
//! name = "store-alert-to-email"
//! [trigger.kafka]
//! topic = "store-alerts-topic"
//! group = "store-alerts"
//! [capabilities.documents]
//! read = []                     # collections it may read
//! write = ["store_alerts"]      # collections it may read and write
//! [capabilities.mail]
//! enabled = true
//! [config.distribution-list]    # config::get("distribution-list")
//! env = "ALERT_DISTRIBUTION_LIST"
//! required = true
//! ```

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::wasm::host::Grants;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub trigger: Trigger,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub kafka: KafkaTrigger,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTrigger {
    pub topic: String,
    /// Consumer group; defaults to the function's name.
    pub group: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub documents: DocumentGrant,
    #[serde(default)]
    pub mail: MailGrant,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentGrant {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailGrant {
    #[serde(default)]
    pub enabled: bool,
}

/// A configuration value: literal, or taken from a host environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigValue {
    pub value: Option<String>,
    pub env: Option<String>,
    #[serde(default)]
    pub required: bool,
}

impl Manifest {
    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = toml::from_str(text).context("invalid manifest")?;
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid_name(&manifest.name) {
            bail!("name '{}': use letters, digits, '-', '_' and '.' only", manifest.name);
        }
        if !valid_name(&manifest.trigger.kafka.topic) {
            bail!("trigger.kafka.topic '{}' is not a valid topic name", manifest.trigger.kafka.topic);
        }
        if let Some(group) = &manifest.trigger.kafka.group
            && group.trim().is_empty()
        {
            bail!("trigger.kafka.group must not be empty");
        }
        for collection in manifest.capabilities.documents.read.iter().chain(&manifest.capabilities.documents.write) {
            if collection.is_empty() || collection.starts_with("system.") || collection.contains(['$', '\0']) {
                bail!("capabilities.documents: '{collection}' is not a collection a function may use");
            }
        }
        for (key, value) in &manifest.config {
            if value.value.is_some() == value.env.is_some() {
                bail!("config.{key}: give exactly one of `value` or `env`");
            }
            // The host's own settings (database and SMTP credentials among
            // them) are not for functions.
            if let Some(var) = &value.env
                && var.to_ascii_uppercase().starts_with("RUNNEL_")
            {
                bail!("config.{key}: `{var}` is a setting of the host, not for functions");
            }
        }
        Ok(manifest)
    }

    pub fn group(&self) -> &str {
        self.trigger.kafka.group.as_deref().unwrap_or(&self.name)
    }

    /// The grants of this manifest, with configuration resolved through
    /// `env`. A required value that is not set names its variable.
    pub fn grants(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Grants> {
        let mut config = HashMap::new();
        for (key, source) in &self.config {
            let value = match (&source.value, &source.env) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(var)) => env(var).filter(|v| !v.trim().is_empty()),
                (None, None) => None,
            };
            match value {
                Some(v) => {
                    config.insert(key.clone(), v);
                }
                None if source.required => bail!(
                    "{}: required by function '{}' (config '{key}') but not set",
                    source.env.as_deref().unwrap_or(key),
                    self.name
                ),
                None => {}
            }
        }
        let documents = &self.capabilities.documents;
        Ok(Grants {
            read: documents.read.iter().cloned().collect(),
            write: documents.write.iter().cloned().collect(),
            mail: self.capabilities.mail.enabled,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE_ALERT: &str = include_str!("../../../functions/store-alert-to-email/runnel.toml");

    #[test]
    fn the_shipped_manifest_parses() {
        let m = Manifest::parse(STORE_ALERT).unwrap();
        assert_eq!(m.group(), "store-alerts");
        let g = m.grants(|v| (v == "ALERT_DISTRIBUTION_LIST").then(|| "a@x".into())).unwrap();
        assert!(g.mail && g.write.contains("store_alerts"));
        assert_eq!(g.config["distribution-list"], "a@x");
    }

    #[test]
    fn a_missing_required_variable_is_named() {
        let m = Manifest::parse(STORE_ALERT).unwrap();
        let e = m.grants(|_| None).unwrap_err().to_string();
        assert!(e.starts_with("ALERT_DISTRIBUTION_LIST"), "{e}");
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        for (text, expected) in [
            ("name = 'x'", "missing field `trigger`"),
            ("name = 'a b'\n[trigger.kafka]\ntopic = 't'", "name 'a b'"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\nextra = 1", "unknown field `extra`"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[config.k]\nrequired = true", "config.k"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[capabilities.documents]\nwrite = ['system.users']", "system.users"),
            ("not toml", "invalid manifest"),
            ("name = 'x'\n[trigger.kafka]\ntopic = 't'\n[config.db]\nenv = 'RUNNEL_MONGODB_URI'", "setting of the host"),
        ] {
            let e = format!("{:#}", Manifest::parse(text).unwrap_err());
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
