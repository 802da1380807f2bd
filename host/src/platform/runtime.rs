//! The WebAssembly runtime: compiles function components with wasmtime and
//! runs one message through a fresh, sandboxed instance.
//!
//! A component gets the imports of the `stream-function` world (see
//! `wit/runnel.wit`) and the locked-down WASI p2 of [`sandbox`](super::sandbox)
//! (no files, network or environment): whatever it reaches goes through a
//! [capability](super::capabilities), checked against the function's grants.
//! Each call also has a memory cap and a wall-clock deadline, so a
//! misbehaving function cannot take the host down with it.
//!
//! Instances come from wasmtime's pooling allocator, whose slots keep their
//! memory and tables resident between instances (and, where the kernel has
//! it, reset only the pages an instance touched), so a fresh instance per
//! record costs microseconds. Compiled components are kept in memory and on
//! disk (see [`Runtime::new`]), so a component is compiled once per engine.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
    component::{Component, Linker},
};

use super::{
    capabilities::{self, Grants, InstanceState, Services, logging::LogLine},
    journal::Calls,
    sandbox,
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

impl Message {
    /// A record on `topic` with `payload`, at offset 0 of partition 0, with
    /// no key, headers or timestamp (for the test harness, tests, benchmarks).
    pub fn with_payload(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.into(),
            headers: vec![],
            timestamp_ms: None,
        }
    }
}
use bindings::{StreamFunction, StreamFunctionIndices, StreamFunctionPre};

/// The export a component of the `batch-stream-function` world adds.
const HANDLE_BATCH: &str = "handle-batch";
/// The interface through which its `handle-batch` says which record it is on.
const BATCH_INTERFACE: &str = "runnel:function/batch@0.1.0";
/// The most records one `handle-batch` call gets.
pub const MAX_BATCH: u32 = 1000;

/// The journals of the records of a `handle-batch` call, and what renews an
/// instance's capabilities for one of them (`batch.begin`).
pub(crate) struct BatchCalls {
    calls: Vec<Calls>,
    runtime: Runtime,
    function: Arc<str>,
    grants: Grants,
}

/// Links `batch.begin`: from then on, the instance's capability calls are
/// journaled as the calls of that record of the batch, and carry its trace
/// (see [`super::journal::Journal::calls`]), as do its log lines.
/// The lines kept and the call's deadline go on across the batch.
fn link_batch(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    linker.instance(BATCH_INTERFACE)?.func_wrap(
        "begin",
        |mut store: wasmtime::StoreContextMut<'_, InstanceState>, (index,): (u32,)| {
            let state = store.data_mut();
            let Some(batch) = state.batch.take() else {
                wasmtime::bail!("batch.begin({index}) called outside handle-batch")
            };
            let Some(calls) = batch.calls.get(index as usize) else {
                let len = batch.calls.len();
                state.batch = Some(batch);
                wasmtime::bail!("batch.begin({index}) in a batch of {len} messages")
            };
            // What the record before wrote to stdout and stderr is its own.
            for (stream, lines, dropped) in state.sandbox.take_output() {
                state.logging.record_output(stream, lines, dropped);
            }
            let (lines, dropped) = (std::mem::take(&mut state.logging.lines), state.logging.dropped);
            state.renew_capabilities(batch.runtime.services(), &batch.function, &batch.grants, calls);
            state.logging.lines = lines;
            state.logging.dropped = dropped;
            state.batch = Some(batch);
            Ok(())
        },
    )?;
    Ok(())
}

/// An instance's exports: `handle`, and `handle-batch` when it has one.
struct Exports {
    handle: StreamFunction,
    batch: Option<wasmtime::component::Func>,
}

/// What a call asks of an instance.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Message),
    Batch(&'a [Message]),
}

impl Request<'_> {
    fn len(&self) -> u32 {
        match self {
            Request::One(_) => 1,
            Request::Batch(messages) => messages.len() as u32,
        }
    }
}

/// What the function answered.
enum Answer {
    One(Result<(), HandlerError>),
    Batch(Result<(), (u32, HandlerError)>),
}

impl Answer {
    fn handled(&self) -> bool {
        matches!(self, Answer::One(Ok(())) | Answer::Batch(Ok(())))
    }
}

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
    /// Where compiled components are kept across starts, and the engine's
    /// part of their file names.
    disk: Option<Arc<DiskCache>>,
    linker: Linker<InstanceState>,
    services: Services,
    limits: Limits,
    ticker: JoinHandle<()>,
    /// Compiled components by the SHA-256 of their bytes: a version that
    /// differs only in its manifest, or one deployed again, is not compiled
    /// again. Bounded: the oldest go first (a function using one keeps it
    /// alive through its own handle).
    compiled: Mutex<ComponentCache>,
    usage: Arc<Usage>,
}

/// The instances alive on the host and their linear memory.
#[derive(Default)]
struct Usage {
    instances: AtomicI64,
    memory_bytes: AtomicI64,
}

/// A store's resource limits, and its part of the host's [`Usage`]: counted
/// when the store is made, as its memories grow, and no more once dropped.
pub struct Metered {
    limits: StoreLimits,
    usage: Arc<Usage>,
    memory_bytes: usize,
    /// The growth last allowed, taken back if it then failed.
    last_growth: usize,
}

impl Metered {
    fn new(limits: StoreLimits, usage: Arc<Usage>) -> Self {
        usage.instances.fetch_add(1, Ordering::Relaxed);
        Metered { limits, usage, memory_bytes: 0, last_growth: 0 }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.usage.instances.fetch_sub(1, Ordering::Relaxed);
        self.usage.memory_bytes.fetch_sub(self.memory_bytes as i64, Ordering::Relaxed);
    }
}

impl ResourceLimiter for Metered {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.last_growth = desired.saturating_sub(current);
            self.memory_bytes += self.last_growth;
            self.usage.memory_bytes.fetch_add(self.last_growth as i64, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let growth = std::mem::take(&mut self.last_growth);
        self.memory_bytes -= growth;
        self.usage.memory_bytes.fetch_sub(growth as i64, Ordering::Relaxed);
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Instances that can exist at once (every record in progress, every
/// `invoke`, every replay): the size of the instance pool.
const POOLED_INSTANCES: u32 = 256;

/// Per component: enough for a Python component (14 core instances) or a
/// JavaScript one, with room to spare.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 32;
const TABLE_ELEMENTS: usize = 100_000;

/// Memory and table bytes a freed slot keeps resident for the next instance,
/// and how many freed slots stay warm: at most 16 × 1 MiB of memories (and
/// as much of tables) resident for them. (8 MiB and 64 slots kept over
/// 500 MB resident after a busy run, for no gain in a Rust function's
/// instance; a larger function's instance pays the page faults beyond it.)
const KEEP_RESIDENT: usize = 1 << 20;
const WARM_SLOTS: u32 = 16;

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

/// A call's outcome, what the function logged during it, and how long it
/// took (from taking an instance to the call's end).
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    pub logs: Vec<LogLine>,
    pub took: Duration,
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
    /// With `compiled_dir`, compiled components are kept there (named by the
    /// component's SHA-256 and the engine's configuration) and loaded from
    /// there instead of being compiled again. It must be a directory only
    /// this host's user can write: the host runs the native code it finds
    /// there.
    pub fn new(services: Services, limits: Limits, compiled_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let engine = match Engine::new(&engine_config(limits, true)) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(
                    "cannot reserve the instance pool ({e:#}); instances are allocated on demand, which is slower"
                );
                Engine::new(&engine_config(limits, false))?
            }
        };

        let mut linker = Linker::new(&engine);
        capabilities::link(&mut linker)?;
        link_batch(&mut linker)?;

        let disk = match compiled_dir {
            Some(dir) => match DiskCache::open(&engine, dir) {
                Ok(disk) => Some(Arc::new(disk)),
                Err(e) => {
                    tracing::warn!("no cache of compiled components: {e:#}");
                    None
                }
            },
            None => None,
        };

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
                disk,
                linker,
                services,
                limits,
                ticker,
                compiled: Mutex::default(),
                usage: Arc::default(),
            }),
        })
    }

    /// WebAssembly instances alive now (running, or kept warm for reuse),
    /// and their linear memory in bytes.
    pub fn usage(&self) -> (i64, i64) {
        let usage = &self.inner.usage;
        (usage.instances.load(Ordering::Relaxed), usage.memory_bytes.load(Ordering::Relaxed))
    }

    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Compiles `bytes` into a function ready to run with `grants`, or
    /// takes it from the caches. Fails with a clear message for anything
    /// that is not a component of the `stream-function` world, or that
    /// imports more than the world and the sandbox give.
    pub async fn load(&self, name: &str, bytes: &[u8], grants: Grants) -> anyhow::Result<Function> {
        check_header(bytes)?;
        let digest = sha256_hex(&[bytes]);
        let (component, fresh) = self.compile(&digest, bytes).await?;
        sandbox::check_imports(&component)?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("the component's imports do not match what Runnel gives ({e:#})")
        })?;
        let pre = StreamFunctionPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export `handle` of the runnel:function world")?;
        let indices = Arc::new(StreamFunctionIndices::new(pre.instance_pre()).map_err(anyhow::Error::from)?);
        let batch = component.get_export_index(None, HANDLE_BATCH);
        // Kept only once it passed every check.
        self.inner.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.clone(), component.clone());
        if fresh && let Some(disk) = self.inner.disk.clone() {
            let component = component.clone();
            tokio::task::spawn_blocking(move || disk.store(&digest, &component));
        }
        Ok(Function { name: Arc::from(name), grants, pre, indices, batch, runtime: self.clone(), reuse: None })
    }

    /// The compiled `bytes` (whose SHA-256 is `digest`), from memory, from
    /// disk, or compiled now (on a blocking thread, so nothing else waits for
    /// it); true when compiled now.
    async fn compile(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<(Component, bool)> {
        let cached = self.inner.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(digest);
        if let Some(component) = cached {
            return Ok((component, false));
        }
        let runtime = self.clone();
        let owned = bytes.to_vec();
        let key = digest.to_string();
        tokio::task::spawn_blocking(move || {
            let inner = &runtime.inner;
            if let Some(component) = inner.disk.as_ref().and_then(|disk| disk.load(&inner.engine, &key)) {
                return Ok((component, false));
            }
            let component = Component::from_binary(&inner.engine, &owned)
                .map_err(anyhow::Error::from)
                .context("not a valid WebAssembly component")?;
            anyhow::Ok((component, true))
        })
        .await?
    }
}

/// The engine's configuration: async calls, epoch deadlines, and (when
/// `pooled`) the pooling allocator sized for [`POOLED_INSTANCES`].
fn engine_config(limits: Limits, pooled: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true).wasm_component_model(true);
    if pooled {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOLED_INSTANCES)
            .total_stacks(POOLED_INSTANCES)
            // Enough for every instance to be a Python one (14 core
            // instances, 3 memories); slots are address space until used.
            .total_core_instances(POOLED_INSTANCES * 16)
            .total_memories(POOLED_INSTANCES * 3)
            .total_tables(POOLED_INSTANCES * 16)
            .max_unused_warm_slots(WARM_SLOTS)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .table_elements(TABLE_ELEMENTS)
            .max_memory_size(limits.max_memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            // Resets only the pages an instance touched; where the kernel
            // cannot (before Linux 6.7), slots are reset the older way.
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Compiled components on disk, one file per component and engine
/// configuration: `<sha-256 of the component>-<engine hash>.cwasm`.
struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    fn open(engine: &Engine, dir: PathBuf) -> anyhow::Result<Self> {
        Self::own_dir(&dir)?;
        // Hash what decides whether compiled code fits this engine: the
        // wasmtime version, the compiler's settings and the target.
        struct Sha(Sha256);
        impl std::hash::Hasher for Sha {
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let mut sha = Sha(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut sha);
        let engine_key = sha.0.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(DiskCache { dir, engine_key })
    }

    /// Creates `dir` for this user only, or checks that an existing one is
    /// this user's and that no one else can write to it: the host runs the
    /// code it finds there.
    fn own_dir(dir: &std::path::Path) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let metadata = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
        // Who this process is: the owner of a file it creates.
        let probe = dir.join(format!(".owner-{}", uuid::Uuid::new_v4().simple()));
        std::fs::File::create(&probe).with_context(|| format!("cannot write in {}", dir.display()))?;
        let me = std::fs::metadata(&probe).map(|m| m.uid());
        let _ = std::fs::remove_file(&probe);
        if metadata.uid() != me? {
            bail!("{} belongs to another user (uid {})", dir.display(), metadata.uid());
        }
        if metadata.permissions().mode() & 0o022 != 0 {
            bail!("{} can be written by other users (mode {:o}); chmod go-w it", dir.display(), metadata.permissions().mode() & 0o777);
        }
        Ok(())
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The compiled component, if a usable one is on disk. A file that does
    /// not load (damaged, or from another build) is removed.
    fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: files in the cache are written only by `store` below, from
        // `Component::serialize` of this engine's configuration (the name
        // says which); wasmtime still checks the header and the
        // configuration before using one.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "compiled component not usable, compiling again: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the compiled component (whole, by rename) for the next start
    /// or the next host; failing to is only a warning.
    fn store(&self, digest: &str, component: &Component) {
        let path = self.path(digest);
        let write = || -> anyhow::Result<()> {
            let bytes = component.serialize()?;
            // A name no other writer (thread, process, host) uses.
            let part = path.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
            let mut file = std::fs::File::create(&part)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&part, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&part);
            })?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), "cannot keep the compiled component: {e:#}");
        }
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

/// A compiled function with its grants: instantiated afresh for every
/// message, or (opted in with [`Function::reusing`]) from a few warm
/// instances that each serve a bounded number of messages.
#[derive(Clone)]
pub struct Function {
    name: Arc<str>,
    grants: Grants,
    pre: StreamFunctionPre<InstanceState>,
    indices: Arc<StreamFunctionIndices>,
    /// Its `handle-batch`, when the component exports one.
    batch: Option<wasmtime::component::ComponentExportIndex>,
    runtime: Runtime,
    reuse: Option<Arc<Reuse>>,
}

/// How a `handle-batch` call ended.
#[derive(Debug)]
pub struct BatchInvocation {
    /// The messages handled, the first ones of the batch.
    pub handled: usize,
    /// `Handled` when all were; else how the message after the handled ones
    /// was declined, or how the call failed (a trap, a timeout, no
    /// instance), which does not say which message it was on.
    pub outcome: Outcome,
    pub logs: Vec<LogLine>,
    pub took: Duration,
}

/// Instance reuse: its bounds and the instances waiting for a message.
struct Reuse {
    max_messages: u32,
    max_age: Duration,
    idle: Mutex<Vec<Warm>>,
}

/// Idle instances kept per function (one per worker handling it at once is
/// enough; more are dropped).
const IDLE_KEPT: usize = 16;

impl Reuse {
    /// A warm instance young enough to serve, dropping those too old.
    fn take(&self, now: Instant) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|warm| now.duration_since(warm.born) < self.max_age);
        idle.pop()
    }

    fn put(&self, warm: Warm, now: Instant) {
        let young = |warm: &Warm| now.duration_since(warm.born) < self.max_age;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(young);
        if idle.len() < IDLE_KEPT && young(&warm) {
            idle.push(warm);
        }
    }

    /// Gives the pool back every idle instance.
    fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// An instance that handled its last message and may take another.
struct Warm {
    store: Store<InstanceState>,
    instance: Exports,
    served: u32,
    born: std::time::Instant,
}

impl Function {
    /// This function with instance reuse: an instance serves up to
    /// `max_messages` messages for at most `max_age`, and is thrown away
    /// after any message it did not handle (trap, timeout, or an error
    /// answer).
    pub fn reusing(mut self, max_messages: u32, max_age: Duration) -> Self {
        self.reuse = Some(Arc::new(Reuse { max_messages: max_messages.max(1), max_age, idle: Mutex::default() }));
        self
    }

    /// Runs `message` through a new instance, its calls not journaled.
    pub async fn handle(&self, message: &Message) -> Outcome {
        self.invoke(message).await.outcome
    }

    /// Runs `message` through a new instance, its calls not journaled; also
    /// returns what it logged.
    pub async fn invoke(&self, message: &Message) -> Invocation {
        self.run(message, &Calls::unjournaled(self.name.clone())).await
    }

    /// Whether the component exports `handle-batch`.
    pub fn batches(&self) -> bool {
        self.batch.is_some()
    }

    /// Runs `message` through an instance whose capability calls go through
    /// `calls`, the journal of this record: a new one, or with reuse, a warm
    /// one when there is one.
    pub async fn run(&self, message: &Message, calls: &Calls) -> Invocation {
        let (answer, logs, took) = self.execute(Request::One(message), calls, None).await;
        let outcome = match answer {
            Ok(Answer::One(Ok(()))) => Outcome::Handled,
            Ok(Answer::One(Err(declined))) => Outcome::Declined(declined),
            Ok(Answer::Batch(_)) => Outcome::Failed(anyhow::anyhow!("a batch answer to one message")),
            Err(outcome) => outcome,
        };
        Invocation { outcome, logs, took }
    }

    /// Runs `messages` through one instance's `handle-batch` (see
    /// [`Function::batches`]), the capability calls made for `messages[i]`
    /// going through `calls[i]`: a new instance, or with reuse, a warm one
    /// (which then counts every message of the batch as one it served).
    pub async fn run_batch(&self, messages: &[Message], calls: &[Calls]) -> BatchInvocation {
        let fits = messages.len() == calls.len() && messages.len() <= MAX_BATCH as usize;
        let Some(first) = calls.first().filter(|_| fits) else {
            let outcome = match messages.is_empty() && calls.is_empty() {
                true => Outcome::Handled,
                false => Outcome::Failed(anyhow::anyhow!("{} messages with {} journals", messages.len(), calls.len())),
            };
            return BatchInvocation { handled: 0, outcome, logs: Vec::new(), took: Duration::ZERO };
        };
        let batch = BatchCalls { calls: calls.to_vec(), runtime: self.runtime.clone(), function: self.name.clone(), grants: self.grants.clone() };
        let (answer, logs, took) = self.execute(Request::Batch(messages), first, Some(Box::new(batch))).await;
        let (handled, outcome) = match answer {
            Ok(Answer::Batch(Ok(()))) => (messages.len(), Outcome::Handled),
            Ok(Answer::Batch(Err((index, declined)))) if (index as usize) < messages.len() => {
                (index as usize, Outcome::Declined(declined))
            }
            Ok(Answer::Batch(Err((index, _)))) => (
                0,
                Outcome::Failed(anyhow::anyhow!("handle-batch named message {index} of a batch of {}", messages.len())),
            ),
            Ok(Answer::One(_)) => (0, Outcome::Failed(anyhow::anyhow!("one answer to a batch"))),
            Err(outcome) => (0, outcome),
        };
        BatchInvocation { handled, outcome, logs, took }
    }

    /// Runs `request` on an instance (warm, with reuse, or new), within the
    /// call deadline; returns the answer, or the outcome of a call that gave
    /// none, what the function logged, and how long that took.
    async fn execute(
        &self,
        request: Request<'_>,
        calls: &Calls,
        batch: Option<Box<BatchCalls>>,
    ) -> (Result<Answer, Outcome>, Vec<LogLine>, Duration) {
        let limits = self.runtime.inner.limits;
        // The call's two clock reads: its start (a warm instance's age, the
        // call's deadline) and its end (how long it took, the age again).
        let started = Instant::now();
        let warm = self.reuse.as_ref().and_then(|reuse| reuse.take(started));
        let (mut store, instance, served, born) = match warm {
            Some(mut warm) => {
                warm.store.data_mut().renew(&self.runtime.inner.services, &self.name, &self.grants, calls, started);
                (warm.store, Some(warm.instance), warm.served, warm.born)
            }
            None => (self.store(limits, calls, started), None, 0, started),
        };
        store.data_mut().batch = batch;
        store.set_epoch_deadline(1);
        let run = self.call(&mut store, instance, request);
        let deadline = tokio::time::Instant::from_std(started + limits.timeout + EPOCH_TICK * 10);
        let (answer, instance) = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok((instance, answer))) => {
                let instance = answer.handled().then_some(instance);
                (Ok(answer), instance)
            }
            Ok(Err(CallError::Run(trap))) => (Err(Outcome::Failed(trap.into())), None),
            // Every slot of the pool is in use: a passing condition of the
            // host, retried like a service outage (not against the budget).
            Ok(Err(CallError::Start(e))) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                if let Some(reuse) = &self.reuse {
                    reuse.clear();
                }
                calls.note_unavailable().await;
                let reason = format!("the host is at its limit of instances ({e})");
                (Err(Outcome::Declined(HandlerError::RetryLater(reason))), None)
            }
            Ok(Err(CallError::Start(e))) => {
                (Err(Outcome::NotStarted(anyhow::Error::from(e).context("cannot instantiate"))), None)
            }
            Err(_) => (
                Err(Outcome::Failed(anyhow::anyhow!("did not finish within {:?} (waiting on a host call)", limits.timeout))),
                None,
            ),
        };
        let ended = Instant::now();
        let took = ended - started;
        let state = store.data_mut();
        state.batch = None;
        for (stream, lines, dropped) in state.sandbox.take_output() {
            state.logging.record_output(stream, lines, dropped);
        }
        let logging = &mut state.logging;
        let mut logs = std::mem::take(&mut logging.lines);
        if logging.dropped > 0 {
            logs.push(LogLine { level: "warn", message: format!("… {} more lines not kept", logging.dropped) });
        }
        // Only an instance that handled its messages may take more.
        if let (Some(reuse), Some(instance)) = (&self.reuse, instance)
            && served + request.len() < reuse.max_messages
        {
            reuse.put(Warm { store, instance, served: served + request.len(), born }, ended);
        }
        (answer, logs, took)
    }

    fn store(&self, limits: Limits, calls: &Calls, started: Instant) -> Store<InstanceState> {
        let inner = &self.runtime.inner;
        // Bounds on everything a component can make, not just each memory's
        // size: a Rust component needs one memory and a few small tables, a
        // Python one 14 core instances.
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.max_memory_bytes)
            .memories(MEMORIES_PER_COMPONENT as usize)
            .tables(TABLES_PER_COMPONENT as usize)
            .table_elements(TABLE_ELEMENTS)
            .instances(CORE_INSTANCES_PER_COMPONENT as usize)
            .trap_on_grow_failure(false)
            .build();
        let state = inner.services.instance(&self.name, &self.grants, Metered::new(store_limits, inner.usage.clone()), calls, started);
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to tokio at every tick, and trap once the call in progress
        // has run past its deadline.
        store.epoch_deadline_callback(move |store| {
            if store.data().call_started.elapsed() > limits.timeout {
                wasmtime::bail!("ran longer than {:?}", limits.timeout)
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Calls `handle` or `handle-batch` on `instance`, or on a new one;
    /// returns the instance with the answer.
    async fn call(
        &self,
        store: &mut Store<InstanceState>,
        instance: Option<Exports>,
        request: Request<'_>,
    ) -> Result<(Exports, Answer), CallError> {
        let instance = match instance {
            Some(instance) => instance,
            None => {
                let instance = self.pre.instance_pre().instantiate_async(&mut *store).await.map_err(CallError::Start)?;
                let handle = self.indices.load(&mut *store, &instance).map_err(CallError::Start)?;
                let batch = self.batch.and_then(|index| instance.get_func(&mut *store, index));
                Exports { handle, batch }
            }
        };
        let answer = match request {
            Request::One(message) => Answer::One(instance.handle.call_handle(&mut *store, message).await.map_err(CallError::Run)?),
            Request::Batch(messages) => {
                let func = instance
                    .batch
                    .ok_or_else(|| CallError::Start(wasmtime::format_err!("the component does not export `{HANDLE_BATCH}`")))?;
                let typed = func
                    .typed::<(&[Message],), (Result<(), (u32, HandlerError)>,)>(&*store)
                    .map_err(|e| CallError::Start(e.context(format!("`{HANDLE_BATCH}` is not the one of runnel:function/batch-stream-function"))))?;
                let (answer,) = typed.call_async(&mut *store, (messages,)).await.map_err(CallError::Run)?;
                Answer::Batch(answer)
            }
        };
        Ok((instance, answer))
    }
}
