//! Test harness for a function crate: loads its built component and
//! manifest and runs messages through them, the way `runnel invoke` does.
//! Used by the test `runnel new` writes.

use std::path::{Path, PathBuf};

use crate::platform::runtime::{Function, Invocation, Message};

pub struct Harness {
    function: Function,
    topic: String,
}

/// The folder cargo builds into, seen from a crate's folder.
fn target_dir(crate_dir: &Path) -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    crate_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .unwrap_or(crate_dir)
        .join("target")
}

impl Harness {
    /// Loads the crate `name` of the test being run (its `runnel.toml`, and
    /// its component built with `--target wasm32-wasip2 --profile wasm`)
    /// once, with the services of the environment (connected lazily).
    /// Panics with what to do when the component is not built.
    pub async fn load(name: &str) -> Harness {
        let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo test"));
        let manifest = std::fs::read_to_string(crate_dir.join("runnel.toml")).expect("runnel.toml");
        let wasm = target_dir(&crate_dir).join("wasm32-wasip2/wasm").join(format!("{}.wasm", name.replace('-', "_")));
        let component = std::fs::read(&wasm).unwrap_or_else(|e| {
            panic!("{}: {e}; build it first: cargo build -p {name} --target wasm32-wasip2 --profile wasm", wasm.display())
        });
        let services = super::invoke::services().await.expect("services from the environment");
        let (function, topic) = super::invoke::load(&component, &manifest, services).await.expect("the function loads");
        Harness { function, topic }
    }

    /// Runs a record with `payload` (offset 0, no key, no headers).
    pub async fn invoke(&self, payload: &[u8]) -> Invocation {
        self.invoke_message(&Message::with_payload(self.topic.clone(), payload)).await
    }

    pub async fn invoke_message(&self, message: &Message) -> Invocation {
        self.function.invoke(message).await
    }
}
