//! Loads deployments from a folder and tracks each function's state.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::{Context, bail};
use serde::Serialize;

use super::Manifest;
use crate::wasm::{Function, Runtime};

/// A compiled function with the manifest it was deployed with.
#[derive(Clone)]
pub struct Deployment {
    pub manifest: Manifest,
    pub function: Function,
}

/// How a deployed function is doing, as `GET /api/functions` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum FunctionState {
    Starting,
    Running,
    /// The function gave up, or the host stopped feeding it; see `reason`.
    Failed { reason: String },
    Stopped,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    pub topic: String,
    pub group: String,
    #[serde(flatten)]
    pub state: FunctionState,
    pub handled: u64,
    pub dead_lettered: u64,
}

/// What is deployed, shared between the triggers (which update it) and the
/// HTTP API (which shows it).
#[derive(Clone, Default)]
pub struct Registry {
    functions: Arc<RwLock<BTreeMap<String, FunctionStatus>>>,
}

impl Registry {
    pub fn add(&self, manifest: &Manifest) {
        let status = FunctionStatus {
            name: manifest.name.clone(),
            topic: manifest.trigger.kafka.topic.clone(),
            group: manifest.group().to_string(),
            state: FunctionState::Starting,
            handled: 0,
            dead_lettered: 0,
        };
        self.write().insert(manifest.name.clone(), status);
    }

    pub fn set_state(&self, name: &str, state: FunctionState) {
        if let Some(s) = self.write().get_mut(name) {
            s.state = state;
        }
    }

    pub fn count_handled(&self, name: &str) {
        if let Some(s) = self.write().get_mut(name) {
            s.handled += 1;
        }
    }

    pub fn count_dead_lettered(&self, name: &str) {
        if let Some(s) = self.write().get_mut(name) {
            s.dead_lettered += 1;
        }
    }

    pub fn list(&self) -> Vec<FunctionStatus> {
        self.functions.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, FunctionStatus>> {
        self.functions.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Loads every `<name>.toml` in `dir` with its `<name>.wasm`. Any deployment
/// that cannot be loaded fails the whole load, naming the file and why.
pub async fn load_dir(
    dir: &Path,
    runtime: &Runtime,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<Deployment>> {
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("RUNNEL_FUNCTIONS_DIR: cannot read '{}'", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    manifests.sort();

    let mut deployments: Vec<Deployment> = Vec::new();
    for path in manifests {
        let deployment = load_one(&path, runtime, &env)
            .await
            .with_context(|| format!("cannot deploy '{}'", path.display()))?;
        if deployments.iter().any(|d| d.manifest.name == deployment.manifest.name) {
            bail!("two manifests in '{}' are named '{}'", dir.display(), deployment.manifest.name);
        }
        deployments.push(deployment);
    }
    Ok(deployments)
}

async fn load_one(
    manifest_path: &Path,
    runtime: &Runtime,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Deployment> {
    let text = std::fs::read_to_string(manifest_path).context("cannot read the manifest")?;
    let manifest = Manifest::parse(&text)?;
    let grants = manifest.grants(env)?;
    let wasm_path = manifest_path.with_extension("wasm");
    let bytes = std::fs::read(&wasm_path)
        .with_context(|| format!("cannot read its component '{}'", wasm_path.display()))?;
    let function = runtime
        .load(&manifest.name, bytes, grants)
        .await
        .with_context(|| format!("'{}'", wasm_path.display()))?;
    tracing::info!(function = %manifest.name, topic = %manifest.trigger.kafka.topic, group = manifest.group(), "deployed");
    Ok(Deployment { manifest, function })
}
