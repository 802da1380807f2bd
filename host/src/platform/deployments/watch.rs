//! Hot reload of `RUNNEL_FUNCTIONS_DIR`: a `<name>.wasm` or `<name>.toml`
//! written there is deployed (action `reload`) once the folder has been
//! quiet for [`DEBOUNCE`], so that a file still being written is not read.
//! A deployment that cannot be used (a half-copied component, a broken
//! manifest) is refused as any deploy is: the running version stays, and
//! the reason is logged.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::{sync::watch, task::JoinHandle};

use super::{Deployer, DirEntry, read_entry};

/// How long a function's files must be left alone before they are read.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `dir` until `stop` turns true.
pub fn watch_dir(deployer: Deployer, dir: PathBuf, mut stop: watch::Receiver<bool>) -> anyhow::Result<JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
            return;
        }
        for path in event.paths {
            let wanted = path.extension().is_some_and(|e| e == "wasm" || e == "toml" || e == "sig");
            if let (true, Some(stem)) = (wanted, path.file_stem().and_then(|s| s.to_str())) {
                let _ = tx.send(stem.to_string());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching for changed functions");
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        let mut pending: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                Some(name) = rx.recv() => { pending.insert(name, Instant::now()); continue; }
                _ = tokio::time::sleep(DEBOUNCE / 3), if !pending.is_empty() => {}
            }
            let quiet: Vec<String> =
                pending.iter().filter(|(_, at)| at.elapsed() >= DEBOUNCE).map(|(n, _)| n.clone()).collect();
            for name in quiet {
                pending.remove(&name);
                reload(&deployer, &dir, &name).await;
            }
        }
    }))
}

async fn reload(deployer: &Deployer, dir: &Path, name: &str) {
    let entry = DirEntry::new(dir, name);
    if !entry.manifest.exists() || !entry.component.exists() {
        return; // the other file is still to come
    }
    let (text, bytes, signature) = match read_entry(&entry) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(function = name, "not reloaded: {e:#}");
            return;
        }
    };
    match deployer.deploy(Some(name), &text, &bytes, signature.as_deref(), "reload", false).await {
        Ok(deployed) => tracing::info!(function = name, version = ?deployed.version, activation = ?deployed.activation, "reloaded"),
        Err(e) => tracing::warn!(function = name, "not reloaded, the running version stays: {e}"),
    }
}
