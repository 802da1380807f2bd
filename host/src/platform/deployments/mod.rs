//! Deployments: what runs, on every host.
//!
//! A **version** of a function is its component and its manifest, named by
//! the SHA-256 of both. Versions and the active version of every function are
//! kept in the database ([`store`]); each host's [`Registry`] runs what the
//! database says, through the [`Deployer`]:
//! - a deploy (admin API, CLI, `RUNNEL_FUNCTIONS_DIR`) validates everything
//!   first (manifest, grants, component), keeps the version, makes it active,
//!   and activates it here at once;
//! - every host polls the functions' revisions and activates, swaps or stops
//!   what changed elsewhere ([`Deployer::sync`]).

pub mod manifest;
pub mod registry;
pub mod signing;
pub mod status;
pub mod store;
pub mod watch;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

pub use manifest::{Manifest, ManifestError};
pub use registry::{Activation, FunctionStatus, Registry, TriggerSettings};
pub use signing::{SignatureError, TrustedKeys};
pub use status::{CounterSnapshot, FunctionState, Incident, PartitionLag, Status};
pub use store::{FunctionDoc, HistoryEntry, VersionDoc, VersionStore};

use crate::platform::{
    kafka::replay::{ReplayFrom, ReplayReport},
    runtime::{Function, Runtime, sha256_hex},
};

/// A compiled version, ready to run.
pub struct Deployment {
    /// The SHA-256 of the component and the manifest.
    pub version: String,
    pub manifest: Manifest,
    pub function: Function,
    /// Whose trusted key signed it (none when no keys are configured).
    pub signer: Option<String>,
}

/// Why a deploy was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("manifest: name '{found}' does not match the function's name '{expected}'")]
    NameMismatch { expected: String, found: String },
    #[error("manifest: {0:#}")]
    Grants(anyhow::Error),
    #[error("component: {0:#}")]
    Component(anyhow::Error),
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("no function '{0}'")]
    UnknownFunction(String),
    #[error("{0}")]
    UnknownVersion(String),
    /// The database or the broker did not answer.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// Why a replay was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no function '{0}'")]
    UnknownFunction(String),
    /// The function is in no state to replay (the reason says why).
    #[error("{0}")]
    NotRunning(String),
    /// The database or the broker did not answer, or a record could not be read.
    #[error("the replay stopped: {0:#}")]
    Failed(anyhow::Error),
}

/// The database did not answer: nothing was changed.
fn unavailable(e: mongodb::error::Error) -> DeployError {
    DeployError::Unavailable(anyhow::Error::new(e).context("database"))
}

/// The result of a deploy, rollback or undeploy.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    pub name: String,
    pub version: Option<String>,
    pub revision: i64,
    /// What changed on this host.
    pub activation: Option<Activation>,
}

/// What this host made of a function's revision.
struct Applied {
    revision: i64,
    /// Why it does not run here.
    error: Option<String>,
    /// The error may pass (the database or the broker did not answer): the
    /// next sync tries the revision again.
    retry: bool,
}

/// Deploys, rolls back and undeploys, keeps this host in step with the
/// database. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<DeployerInner>,
}

type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

struct DeployerInner {
    runtime: Runtime,
    registry: Registry,
    store: VersionStore,
    env: Env,
    /// Keys one of which must have signed every version; none: no signature needed.
    trusted: Option<TrustedKeys>,
    /// Per function, the revision this host last applied, and the error if
    /// it could not run it.
    applied: Mutex<HashMap<String, Applied>>,
    /// Serializes changes made on this host.
    changes: tokio::sync::Mutex<()>,
}

impl Deployer {
    pub fn new(runtime: Runtime, registry: Registry, store: VersionStore, env: Env, trusted: Option<TrustedKeys>) -> Self {
        Deployer {
            inner: Arc::new(DeployerInner {
                runtime,
                registry,
                store,
                env,
                trusted,
                applied: Mutex::default(),
                changes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn store(&self) -> &VersionStore {
        &self.inner.store
    }

    /// Checks (its signature too, when keys are trusted) and compiles a
    /// version; nothing is kept or activated.
    pub async fn prepare(
        &self,
        name: Option<&str>,
        manifest_text: &str,
        component: &[u8],
        signature: Option<&str>,
    ) -> Result<Deployment, DeployError> {
        let manifest = Manifest::parse(manifest_text)?;
        if let Some(expected) = name
            && manifest.name != expected
        {
            return Err(DeployError::NameMismatch { expected: expected.to_string(), found: manifest.name });
        }
        // Before any of its bytes are compiled.
        let signer = match &self.inner.trusted {
            Some(trusted) => Some(trusted.verify(manifest_text.as_bytes(), component, signature)?),
            None => None,
        };
        let env = self.inner.env.clone();
        let grants = self
            .inner
            .runtime
            .services()
            .resolve(&manifest.name, &manifest.capabilities, &*env)
            .map_err(DeployError::Grants)?;
        let mut function =
            self.inner.runtime.load(&manifest.name, component, grants).await.map_err(DeployError::Component)?;
        let batch = manifest.trigger.kafka.max_batch;
        if batch > 1 && !function.batches() {
            return Err(DeployError::Component(anyhow::anyhow!(
                "max-batch = {batch} needs a component that exports handle-batch (world runnel:function/batch-stream-function)"
            )));
        }
        if let Some(reuse) = manifest.reuse {
            function = function.reusing(reuse.max_messages, Duration::from_secs(reuse.max_seconds.into()));
        }
        Ok(Deployment { version: version_id(manifest_text, component), manifest, function, signer })
    }

    /// Validates, keeps and activates a version (`action` says why, for the
    /// history). With `only_if_new`, a version deployed before is not made
    /// active again (how `RUNNEL_FUNCTIONS_DIR` seeds at start).
    pub async fn deploy(
        &self,
        name: Option<&str>,
        manifest_text: &str,
        component: &[u8],
        signature: Option<&str>,
        action: &str,
        only_if_new: bool,
    ) -> Result<Deployed, DeployError> {
        let store = &self.inner.store;
        if only_if_new
            && let Some(known) = store.version(&version_id(manifest_text, component)).await.map_err(unavailable)?
            // A signature it did not have then is checked and kept.
            && (signature.is_none() || known.signature.is_some())
        {
            // Checked when it was first deployed; not compiled again.
            if let Some(expected) = name
                && known.function != expected
            {
                return Err(DeployError::NameMismatch { expected: expected.to_string(), found: known.function });
            }
            let function = store.head(&known.function).await.map_err(unavailable)?;
            return Ok(Deployed {
                name: known.function,
                version: function.as_ref().and_then(|f| f.active.clone()),
                revision: function.map_or(0, |f| f.revision),
                activation: None,
            });
        }
        let deployment = self.prepare(name, manifest_text, component, signature).await?;
        let _changes = self.inner.changes.lock().await;
        let name = deployment.manifest.name.clone();
        let version = deployment.version.clone();
        // Deploying the active version again changes nothing.
        if let Some(current) = store.head(&name).await.map_err(unavailable)?
            && current.active.as_deref() == Some(version.as_str())
            && self.inner.registry.running_version(&name).as_deref() == Some(version.as_str())
        {
            return Ok(Deployed { name, version: Some(version), revision: current.revision, activation: Some(Activation::Unchanged) });
        }
        let digest = sha256_hex(&[component]);
        let signed = signature.zip(deployment.signer.as_deref());
        store.put_version(&version, &name, manifest_text, &digest, component, signed).await.map_err(unavailable)?;
        let function = store.set_active(&name, Some(&version), action).await.map_err(unavailable)?;
        let activation = self.apply(&name, function.revision, Some(deployment)).await;
        tracing::info!(function = %name, %version, action, "deployed");
        Ok(Deployed { name, version: Some(version), revision: function.revision, activation })
    }

    /// Makes an earlier version active again: `to`, or the one active
    /// before the current one.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> Result<Deployed, DeployError> {
        let store = &self.inner.store;
        let function = store.function(name).await.map_err(unavailable)?.ok_or_else(|| DeployError::UnknownFunction(name.into()))?;
        let target = match to {
            Some(v) => v.to_string(),
            None => function
                .history
                .iter()
                .rev()
                .filter_map(|h| h.version.as_deref())
                .find(|v| Some(*v) != function.active.as_deref())
                .ok_or_else(|| DeployError::UnknownVersion(format!("'{name}' has no earlier version to roll back to")))?
                .to_string(),
        };
        let version = store
            .version(&target)
            .await
            .map_err(unavailable)?
            .filter(|v| v.function == name)
            .ok_or_else(|| DeployError::UnknownVersion(format!("'{name}' has no version '{target}'")))?;
        let component = store.component(&version).await.map_err(unavailable)?;
        // Checked again: the trusted keys may have changed since.
        self.deploy(Some(name), &version.manifest, &component, version.signature.as_deref(), "rollback", false).await
    }

    /// Undeploys `name` on every host; its versions stay, for a rollback.
    pub async fn undeploy(&self, name: &str) -> Result<Deployed, DeployError> {
        let _changes = self.inner.changes.lock().await;
        let store = &self.inner.store;
        match store.head(name).await.map_err(unavailable)? {
            Some(f) if f.active.is_some() => {}
            _ => return Err(DeployError::UnknownFunction(name.into())),
        }
        let function = store.set_active(name, None, "undeploy").await.map_err(unavailable)?;
        self.apply(name, function.revision, None).await;
        Ok(Deployed { name: name.into(), version: None, revision: function.revision, activation: None })
    }

    /// Replays records for `name` (see [`crate::platform::kafka::replay`]):
    /// through its running version here, or, for an undeployed function
    /// and an offset or a time, by moving its group's offsets.
    pub async fn replay(&self, name: &str, from: ReplayFrom) -> Result<ReplayReport, ReplayError> {
        if let Some(replayed) = self.inner.registry.replay(name, from).await {
            return replayed.map_err(ReplayError::Failed);
        }
        let store = &self.inner.store;
        let failed = |e: mongodb::error::Error| ReplayError::Failed(anyhow::Error::new(e).context("database"));
        let function = store.function(name).await.map_err(failed)?.ok_or_else(|| ReplayError::UnknownFunction(name.into()))?;
        if function.active.is_some() {
            return Err(ReplayError::NotRunning(format!(
                "'{name}' is deployed but runs nothing on this host (see its state): deploy another version or roll it back"
            )));
        }
        if matches!(from, ReplayFrom::DeadLetters { .. }) {
            return Err(ReplayError::NotRunning(format!(
                "'{name}' is undeployed: deploy it (or roll it back) to replay its dead letters"
            )));
        }
        let last = function.history.iter().rev().find_map(|h| h.version.clone());
        let version = match last {
            Some(v) => store.version(&v).await.map_err(failed)?,
            None => None,
        };
        let version = version.ok_or_else(|| ReplayError::UnknownFunction(name.into()))?;
        let manifest = Manifest::parse(&version.manifest).map_err(|e| ReplayError::Failed(anyhow::anyhow!("manifest: {e}")))?;
        self.inner.registry.move_offsets(&manifest, from).await.map_err(ReplayError::Failed)
    }

    /// Runs `deployment` (None: nothing) for `name` here, recording the
    /// revision applied and any error. A trigger that cannot start (the
    /// broker does not answer) is tried again by the next sync.
    async fn apply(&self, name: &str, revision: i64, deployment: Option<Deployment>) -> Option<Activation> {
        let (activation, error) = match deployment {
            Some(d) => match self.inner.registry.activate(d).await {
                Ok(a) => (Some(a), None),
                Err(e) => {
                    tracing::error!(function = %name, "cannot run here yet, will retry: {e:#}");
                    (None, Some(format!("{e:#}")))
                }
            },
            None => {
                self.inner.registry.stop(name).await;
                (None, None)
            }
        };
        let retry = error.is_some();
        self.record_applied(name, revision, error, retry);
        activation
    }

    /// Remembers what this host made of `revision` of `name`.
    fn record_applied(&self, name: &str, revision: i64, error: Option<String>, retry: bool) {
        self.inner
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Applied { revision, error, retry });
    }

    /// The revision of `name` this host is done with (applied, or failed
    /// for good), if any.
    fn applied_revision(&self, name: &str) -> Option<i64> {
        self.inner.applied.lock().unwrap_or_else(|e| e.into_inner()).get(name).filter(|a| !a.retry).map(|a| a.revision)
    }

    /// How many functions are deployed, and those whose active version this
    /// host has not loaded (not in step yet, or it cannot load it). Reads
    /// the database.
    pub async fn not_loaded(&self) -> mongodb::error::Result<(usize, Vec<String>)> {
        let mut deployed = 0;
        let mut not_loaded = Vec::new();
        for function in self.inner.store.functions().await? {
            let Some(active) = function.active else { continue };
            deployed += 1;
            let here = self.inner.registry.status(&function.name).map(|s| s.version);
            if here.as_deref() != Some(active.as_str()) {
                not_loaded.push(function.name);
            }
        }
        Ok((deployed, not_loaded))
    }

    /// The error that keeps this host from running `name`'s active version.
    pub fn local_error(&self, name: &str) -> Option<String> {
        self.inner.applied.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(|a| a.error.clone())
    }

    /// Brings this host in step with the database: starts, swaps or stops
    /// every function whose revision changed since this host last applied it.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let revisions = self.inner.store.revisions().await.context("cannot read the deployments")?;
        let pending: Vec<String> = revisions
            .into_iter()
            .filter(|(name, revision)| !self.applied_revision(name).is_some_and(|r| r >= *revision))
            .map(|(name, _)| name)
            .collect();
        let mut loaded = self.load_all(&pending).await;
        for name in pending {
            let _changes = self.inner.changes.lock().await;
            // Read under the lock: a change made here meanwhile wins.
            let Some(function) = self.inner.store.head(&name).await? else { continue };
            if self.applied_revision(&function.name).is_some_and(|r| r >= function.revision) {
                continue;
            }
            let deployment = match &function.active {
                None => Ok(None),
                Some(version) if self.inner.registry.running_version(&function.name).as_deref() == Some(version) => {
                    self.record_applied(&function.name, function.revision, None, false);
                    continue;
                }
                Some(version) => match loaded.remove(version) {
                    Some(preloaded) => preloaded,
                    None => self.load(version).await,
                },
            };
            let deployment = match deployment {
                Ok(deployment) => deployment,
                Err(e) => {
                    let version = function.active.as_deref().unwrap_or_default();
                    let error = format!("cannot load version {version}: {e}");
                    tracing::error!(function = %function.name, "{error}");
                    let retry = matches!(e, DeployError::Unavailable(_));
                    self.record_applied(&function.name, function.revision, Some(error), retry);
                    continue;
                }
            };
            let activation = self.apply(&function.name, function.revision, deployment).await;
            tracing::info!(function = %function.name, revision = function.revision, ?activation, "in step with the database");
        }
        Ok(())
    }

    /// Compiles (or loads from the compiled cache) the active versions of
    /// `names` that do not run here, all at once, and creates their topics
    /// in one request: what makes a start with many functions quick.
    async fn load_all(&self, names: &[String]) -> HashMap<String, Result<Option<Deployment>, DeployError>> {
        let heads = futures::future::join_all(names.iter().map(|name| self.inner.store.head(name))).await;
        let versions: std::collections::BTreeSet<String> = heads
            .into_iter()
            .filter_map(|head| head.ok().flatten())
            .filter_map(|f| f.active.filter(|v| self.inner.registry.running_version(&f.name).as_deref() != Some(v)))
            .collect();
        let loaded: HashMap<String, Result<Option<Deployment>, DeployError>> =
            futures::future::join_all(versions.into_iter().map(|version| async move {
                let deployment = self.load(&version).await;
                (version, deployment)
            }))
            .await
            .into_iter()
            .collect();
        let ready = loaded.values().filter_map(|d| d.as_ref().ok().and_then(Option::as_ref));
        if let Err(e) = self.inner.registry.ensure_topics(ready).await {
            // Each activation tries again, and reports it.
            tracing::warn!("cannot create the functions' topics yet: {e:#}");
        }
        loaded
    }

    /// Reads and compiles a stored version (as an activation: `Some`).
    async fn load(&self, version: &str) -> Result<Option<Deployment>, DeployError> {
        let store = &self.inner.store;
        let doc = store.version(version).await.map_err(unavailable)?.ok_or_else(|| DeployError::UnknownVersion(version.into()))?;
        let component = store.component(&doc).await.map_err(unavailable)?;
        self.prepare(Some(&doc.function), &doc.manifest, &component, doc.signature.as_deref()).await.map(Some)
    }

    /// Syncs every `interval` until `stop` turns true.
    pub async fn sync_until(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            match self.sync().await {
                Ok(()) if failing => {
                    tracing::info!("reading the deployments again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!("{e:#}; will retry");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// The id of a version: the SHA-256 of its component's digest and its
/// manifest's text.
pub fn version_id(manifest_text: &str, component: &[u8]) -> String {
    let digest = sha256_hex(&[component]);
    sha256_hex(&[digest.as_bytes(), b"\n", manifest_text.as_bytes()])
}

/// A deployment in a folder: `<name>.toml` and `<name>.wasm`, and its
/// signature `<name>.sig` if it has one.
pub struct DirEntry {
    pub name: String,
    pub manifest: PathBuf,
    pub component: PathBuf,
    pub signature: PathBuf,
}

impl DirEntry {
    pub fn new(dir: &Path, name: &str) -> Self {
        DirEntry {
            name: name.to_string(),
            manifest: dir.join(format!("{name}.toml")),
            component: dir.join(format!("{name}.wasm")),
            signature: dir.join(format!("{name}.sig")),
        }
    }
}

/// The deployments in `dir`, by name.
pub fn dir_entries(dir: &Path) -> anyhow::Result<Vec<DirEntry>> {
    let mut entries: Vec<DirEntry> = std::fs::read_dir(dir)
        .with_context(|| format!("RUNNEL_FUNCTIONS_DIR: cannot read '{}'", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| Some(DirEntry::new(dir, p.file_stem()?.to_str()?)))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Reads one deployment of a folder: manifest, component, signature.
pub fn read_entry(entry: &DirEntry) -> anyhow::Result<(String, Vec<u8>, Option<String>)> {
    let text = std::fs::read_to_string(&entry.manifest)
        .with_context(|| format!("'{}': cannot read the manifest", entry.manifest.display()))?;
    let bytes = std::fs::read(&entry.component)
        .with_context(|| format!("'{}': cannot read its component", entry.component.display()))?;
    let signature = read_signature(&entry.signature)?;
    Ok((text, bytes, signature))
}

fn read_signature(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("'{}': cannot read the signature", path.display()))),
    }
}

impl Deployer {
    /// Deploys every function in `dir` whose version is new. Any deployment
    /// that cannot be used fails the whole seed, naming the file and why.
    pub async fn seed(&self, dir: &Path) -> anyhow::Result<()> {
        for entry in dir_entries(dir)? {
            let file = entry.manifest.display().to_string();
            // The manifest first: its errors matter even without a component.
            let text = std::fs::read_to_string(&entry.manifest).with_context(|| format!("'{file}': cannot read the manifest"))?;
            Manifest::parse(&text).map_err(|e| anyhow::anyhow!("cannot deploy '{file}': manifest: {e}"))?;
            let bytes = std::fs::read(&entry.component)
                .with_context(|| format!("'{}': cannot read its component", entry.component.display()))?;
            let signature = read_signature(&entry.signature)?;
            self.deploy(Some(&entry.name), &text, &bytes, signature.as_deref(), "seed", true).await.map_err(|e| {
                let at = match &e {
                    DeployError::Component(_) => entry.component.display().to_string(),
                    DeployError::Signature(_) => entry.signature.display().to_string(),
                    _ => file.clone(),
                };
                anyhow::anyhow!("cannot deploy '{at}': {e}")
            })?;
        }
        Ok(())
    }
}
