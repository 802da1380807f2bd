//! `config`: named values the manifest gives the function, literal or read
//! from a host environment variable when the version is deployed.
//!
//! ```toml
//! [capabilities.config.distribution-list]   # config::get("distribution-list")
//! env = "ALERT_DISTRIBUTION_LIST"           # or: value = "…"
//! required = true                           # refused at deploy when unset
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anyhow::bail;
use serde::{Deserialize, Deserializer};
use wasmtime::component::{HasSelf, Linker};

use super::Capability;
use crate::platform::runtime::bindings::runnel::function::config as wit;

/// The service: nothing shared; values are resolved per deployment.
pub struct Config;

/// Keys to where their values come from.
pub type Grant = BTreeMap<String, Source>;

/// Where a value comes from: exactly one of `value` or `env`.
#[derive(Debug, Clone)]
pub enum Source {
    Value(String),
    Env { var: String, required: bool },
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            value: Option<String>,
            env: Option<String>,
            #[serde(default)]
            required: bool,
        }
        use serde::de::Error;
        match Raw::deserialize(deserializer)? {
            Raw { value: Some(v), env: None, .. } => Ok(Source::Value(v)),
            Raw { value: None, env: Some(var), required } => {
                // The host's own settings (database and SMTP credentials
                // among them) are not for functions.
                if var.to_ascii_uppercase().starts_with("RUNNEL_") {
                    return Err(D::Error::custom(format!("`{var}` is a setting of the host, not for functions")));
                }
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(D::Error::custom(format!("`{var}` is not an environment variable name")));
                }
                Ok(Source::Env { var, required })
            }
            _ => Err(D::Error::custom("give exactly one of `value` or `env`")),
        }
    }
}

#[derive(Debug)]
pub struct Resolved {
    values: HashMap<String, String>,
}

pub struct State {
    values: Arc<Resolved>,
}

impl Capability for Config {
    type Grant = Grant;
    type Resolved = Resolved;
    type State = State;

    fn resolve(&self, function: &str, grant: &Grant, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Resolved> {
        let mut values = HashMap::new();
        for (key, source) in grant {
            match source {
                Source::Value(v) => {
                    values.insert(key.clone(), v.clone());
                }
                Source::Env { var, required } => match env(var).filter(|v| !v.trim().is_empty()) {
                    Some(v) => {
                        values.insert(key.clone(), v);
                    }
                    None if *required => {
                        bail!("{var}: required by function '{function}' (config '{key}') but not set on this host")
                    }
                    None => {}
                },
            }
        }
        Ok(Resolved { values })
    }

    fn instance(&self, _: &Arc<str>, resolved: &Arc<Resolved>, _: &crate::platform::journal::Calls) -> State {
        State { values: resolved.clone() }
    }

    /// The values are the grant's, the same for every record.
    fn renew(&self, _: &mut State, _: &Arc<str>, _: &Arc<Resolved>, _: &crate::platform::journal::Calls) {}

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

impl wit::Host for State {
    async fn get(&mut self, name: String) -> Option<String> {
        self.values.values.get(&name).cloned()
    }
}
