//! WebAssembly runtime: compiles function components with wasmtime and runs
//! one message through a fresh, sandboxed instance.
//!
//! A component gets exactly the imports of the `stream-function` world (see
//! `wit/runnel.wit`) and nothing else: no WASI, so no filesystem, network,
//! clock or environment. Every import goes through [`host::HostState`], which
//! checks it against the function's grants. Each call also has a memory cap
//! and a wall-clock deadline, so a misbehaving function cannot take the host
//! down with it.

pub mod host;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use wasmtime::{
    Config, Engine, Store, StoreLimitsBuilder, UpdateDeadline,
    component::{Component, HasSelf, Linker},
};

use host::{Capabilities, Grants, HostState};

wasmtime::component::bindgen!({
    world: "stream-function",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::runnel::function::types::Header;

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

/// The engine, the linker with the host's capabilities, and the epoch ticker.
/// One per host; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    capabilities: Arc<Capabilities>,
    limits: Limits,
    ticker: JoinHandle<()>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker.abort();
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
    /// no record can be handled until the function is redeployed.
    NotStarted(anyhow::Error),
}

/// Why a call did not return an answer.
enum CallError {
    Start(wasmtime::Error),
    Run(wasmtime::Error),
}

impl Runtime {
    /// Must be called within a tokio runtime (it spawns the epoch ticker).
    pub fn new(capabilities: Capabilities, limits: Limits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        StreamFunction::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;

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
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                capabilities: Arc::new(capabilities),
                limits,
                ticker,
            }),
        })
    }

    /// Compiles `bytes` into a function ready to run. Fails with a clear
    /// message for anything that is not a component of the
    /// `stream-function` world, or that imports more than the world gives.
    pub async fn load(&self, name: &str, bytes: Vec<u8>, grants: Grants) -> anyhow::Result<Function> {
        check_header(&bytes)?;
        let engine = self.inner.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
            .await?
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly component")?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "the component needs imports Runnel does not give ({e:#}); a function may import \
                 only runnel:function/{{documents,mail,config,logging,clock}}"
            )
        })?;
        let pre = StreamFunctionPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export `handle` of the runnel:function world")?;
        Ok(Function {
            name: Arc::from(name),
            grants: Arc::new(grants),
            pre,
            runtime: self.clone(),
        })
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
    grants: Arc<Grants>,
    pre: StreamFunctionPre<HostState>,
    runtime: Runtime,
}

impl Function {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `message` through a new instance.
    pub async fn handle(&self, message: &Message) -> Outcome {
        let limits = self.runtime.inner.limits;
        let run = self.call(message, limits);
        match tokio::time::timeout(limits.timeout + EPOCH_TICK * 10, run).await {
            Ok(Ok(Ok(()))) => Outcome::Handled,
            Ok(Ok(Err(declined))) => Outcome::Declined(declined),
            Ok(Err(CallError::Run(trap))) => Outcome::Failed(trap.into()),
            Ok(Err(CallError::Start(e))) => Outcome::NotStarted(anyhow::Error::from(e).context("cannot instantiate")),
            Err(_) => Outcome::Failed(anyhow::anyhow!(
                "did not finish within {:?} (waiting on a host call)",
                limits.timeout
            )),
        }
    }

    async fn call(&self, message: &Message, limits: Limits) -> Result<Result<(), HandlerError>, CallError> {
        let inner = &self.runtime.inner;
        let state = HostState::new(
            self.name.clone(),
            self.grants.clone(),
            inner.capabilities.clone(),
            // Bounds on everything a component can make, not just each
            // memory's size: a Rust component needs one memory and a few
            // small tables.
            StoreLimitsBuilder::new()
                .memory_size(limits.max_memory_bytes)
                .memories(2)
                .tables(8)
                .table_elements(100_000)
                .instances(8)
                .trap_on_grow_failure(false)
                .build(),
        );
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
        let instance = self.pre.instantiate_async(&mut store).await.map_err(CallError::Start)?;
        instance.call_handle(&mut store, message).await.map_err(CallError::Run)
    }
}
