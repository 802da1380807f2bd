//! The WebAssembly runtime: compiles function components with wasmtime and
//! runs one message through a fresh, sandboxed instance.
//!
//! A component gets exactly the imports of the `stream-function` world (see
//! `wit/runnel.wit`) and nothing else: no WASI, so no filesystem, network,
//! clock or environment. Every import is a [capability](super::capabilities),
//! checked against the function's grants. Each call also has a memory cap
//! and a wall-clock deadline, so a misbehaving function cannot take the host
//! down with it.

use std::{collections::HashMap, sync::{Arc, Mutex}, time::Duration};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use wasmtime::{
    Config, Engine, Store, StoreLimitsBuilder, UpdateDeadline,
    component::{Component, Linker},
};

use super::{
    capabilities::{self, Grants, InstanceState, Services, logging::LogLine},
    journal::Calls,
};

/// The host side of `wit/runnel.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "stream-function",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
        // Capability results are journaled as BSON.
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

pub use bindings::runnel::function::types::Header;
pub use bindings::{HandlerError, Message};
use bindings::StreamFunctionPre;

/// How often the engine's epoch advances; deadlines are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every call of every function.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a call may run, host calls included.
    pub timeout: Duration,
    /// Largest linear memory a function may grow to.
    pub max_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: Duration::from_secs(30), max_memory_bytes: 64 << 20 }
    }
}

/// The engine, the linker with the capabilities, and the epoch ticker. One
/// per host; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<InstanceState>,
    services: Services,
    limits: Limits,
    ticker: JoinHandle<()>,
    /// Compiled components by the SHA-256 of their bytes: a version that
    /// differs only in its manifest, or one deployed again, is not compiled
    /// again. Bounded: the oldest go first (a function using one keeps it
    /// alive through its own handle).
    compiled: Mutex<ComponentCache>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// How many compiled components the cache keeps.
const COMPILED_KEPT: usize = 32;

#[derive(Default)]
struct ComponentCache {
    components: HashMap<String, Component>,
    /// Digests, oldest first.
    order: std::collections::VecDeque<String>,
}

impl ComponentCache {
    fn get(&self, digest: &str) -> Option<Component> {
        self.components.get(digest).cloned()
    }

    fn insert(&mut self, digest: String, component: Component) {
        if self.components.insert(digest.clone(), component).is_none() {
            self.order.push_back(digest);
        }
        while self.order.len() > COMPILED_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.components.remove(&oldest);
            }
        }
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum Outcome {
    /// The function handled the message.
    Handled,
    /// The function declined the message, saying why and what to do.
    Declined(HandlerError),
    /// The function trapped, ran out of time or memory: a bug in the function.
    Failed(anyhow::Error),
    /// No instance could be made (e.g. it needs more than the limits allow):
    /// no record can be handled until another version is deployed.
    NotStarted(anyhow::Error),
}

impl Outcome {
    /// One word for the outcome: ok, bad-input, retry-later, give-up, trap,
    /// not-started.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Handled => "ok",
            Outcome::Declined(HandlerError::BadInput(_)) => "bad-input",
            Outcome::Declined(HandlerError::RetryLater(_)) => "retry-later",
            Outcome::Declined(HandlerError::GiveUp(_)) => "give-up",
            Outcome::Failed(_) => "trap",
            Outcome::NotStarted(_) => "not-started",
        }
    }
}

/// A call's outcome and what the function logged during it.
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    pub logs: Vec<LogLine>,
}

/// Why a call did not return an answer.
enum CallError {
    Start(wasmtime::Error),
    Run(wasmtime::Error),
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// Must be called within a tokio runtime (it spawns the epoch ticker).
    pub fn new(services: Services, limits: Limits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        capabilities::link(&mut linker)?;

        let ticker = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(EPOCH_TICK);
                loop {
                    interval.tick().await;
                    engine.increment_epoch();
                }
            })
        };
        Ok(Runtime {
            inner: Arc::new(RuntimeInner { engine, linker, services, limits, ticker, compiled: Mutex::default() }),
        })
    }

    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Compiles `bytes` into a function ready to run with `grants`. Fails
    /// with a clear message for anything that is not a component of the
    /// `stream-function` world, or that imports more than the world gives.
    pub async fn load(&self, name: &str, bytes: &[u8], grants: Grants) -> anyhow::Result<Function> {
        check_header(bytes)?;
        let digest = sha256_hex(&[bytes]);
        let cached = self.inner.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&digest);
        let component = match cached {
            Some(component) => component,
            None => {
                let engine = self.inner.engine.clone();
                let owned = bytes.to_vec();
                let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &owned))
                    .await?
                    .map_err(anyhow::Error::from)
                    .context("not a valid WebAssembly component")?;
                self.inner.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, component.clone());
                component
            }
        };
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "the component needs imports Runnel does not give ({e:#}); a function may import only \
                 runnel:function/{{{}}}",
                capabilities::NAMES.join(",")
            )
        })?;
        let pre = StreamFunctionPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export `handle` of the runnel:function world")?;
        Ok(Function { name: Arc::from(name), grants, pre, runtime: self.clone() })
    }
}

/// Tells a core module, or something that is not WebAssembly, from a component.
fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no \\0asm header)");
    }
    // Bytes 4..8: version 1 for a core module, 0x0d + layer 1 for a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!(
            "a core WebAssembly module, not a component; build the function with \
             `cargo build --target wasm32-wasip2`"
        );
    }
    Ok(())
}

/// A compiled function with its grants: instantiated afresh for every message.
#[derive(Clone)]
pub struct Function {
    name: Arc<str>,
    grants: Grants,
    pre: StreamFunctionPre<InstanceState>,
    runtime: Runtime,
}

impl Function {
    /// Runs `message` through a new instance, its calls not journaled.
    pub async fn handle(&self, message: &Message) -> Outcome {
        self.invoke(message).await.outcome
    }

    /// Runs `message` through a new instance, its calls not journaled; also
    /// returns what it logged.
    pub async fn invoke(&self, message: &Message) -> Invocation {
        self.run(message, &Calls::unjournaled(self.name.clone())).await
    }

    /// Runs `message` through a new instance whose capability calls go
    /// through `calls`, the journal of this record.
    pub async fn run(&self, message: &Message, calls: &Calls) -> Invocation {
        let limits = self.runtime.inner.limits;
        let mut store = self.store(limits, calls);
        let run = self.call(&mut store, message);
        let outcome = match tokio::time::timeout(limits.timeout + EPOCH_TICK * 10, run).await {
            Ok(Ok(Ok(()))) => Outcome::Handled,
            Ok(Ok(Err(declined))) => Outcome::Declined(declined),
            Ok(Err(CallError::Run(trap))) => Outcome::Failed(trap.into()),
            Ok(Err(CallError::Start(e))) => Outcome::NotStarted(anyhow::Error::from(e).context("cannot instantiate")),
            Err(_) => {
                Outcome::Failed(anyhow::anyhow!("did not finish within {:?} (waiting on a host call)", limits.timeout))
            }
        };
        let logging = &mut store.data_mut().logging;
        let mut logs = std::mem::take(&mut logging.lines);
        if logging.dropped > 0 {
            logs.push(LogLine { level: "warn", message: format!("… {} more lines not kept", logging.dropped) });
        }
        Invocation { outcome, logs }
    }

    fn store(&self, limits: Limits, calls: &Calls) -> Store<InstanceState> {
        let inner = &self.runtime.inner;
        // Bounds on everything a component can make, not just each memory's
        // size: a Rust component needs one memory and a few small tables.
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.max_memory_bytes)
            .memories(2)
            .tables(8)
            .table_elements(100_000)
            .instances(8)
            .trap_on_grow_failure(false)
            .build();
        let state = inner.services.instance(&self.name, &self.grants, store_limits, calls);
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to tokio at every tick, and trap once the deadline has passed.
        let started = std::time::Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() > limits.timeout {
                wasmtime::bail!("ran longer than {:?}", limits.timeout)
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    async fn call(&self, store: &mut Store<InstanceState>, message: &Message) -> Result<Result<(), HandlerError>, CallError> {
        let instance = self.pre.instantiate_async(&mut *store).await.map_err(CallError::Start)?;
        instance.call_handle(&mut *store, message).await.map_err(CallError::Run)
    }
}
