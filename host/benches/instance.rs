//! In-process micro-benchmarks (criterion), run by `scripts/bench instance`:
//! one record through the Rust probe's no-op `ok`, by Runnel's runtime with
//! a fresh instance and with a reused one, next to plain wasmtime (its
//! default on-demand allocator, WASI p2, a fresh store and instance per
//! call) in the same run; and 64 records through `handle` one by one next
//! to one `handle-batch` of 64, fresh and reused.
//!
//! Reads RUNNEL_BENCH_FIXTURES_DIR. Nothing is granted, so no server is used.

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use runnel::platform::{
    capabilities::{ManifestGrants, Services, mail::Mail},
    journal::Calls,
    runtime::{Limits, Message, Outcome, Runtime, bindings::StreamFunctionPre},
};
use wasmtime::{
    Config, Engine, Store,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

struct Plain {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let component = support::read("RUNNEL_BENCH_FIXTURES_DIR", "probe.wasm");
    let ok = Message::with_payload("bench", "ok");

    let (fresh, reused) = rt.block_on(async {
        // A driver handle that never connects: no capability is granted.
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=100").await.unwrap();
        let mail = Mail::new("smtp://127.0.0.1:9", "bench@example.com").unwrap();
        let services = Services::new(client.database("bench"), mail, Duration::from_secs(1));
        let runtime = Runtime::new(services, Limits::default(), None).unwrap();
        let grants = runtime.services().resolve("probe", &ManifestGrants::default(), &|_| None).unwrap();
        let fresh = runtime.load("probe", &component, grants).await.unwrap();
        let reused = fresh.clone().reusing(u32::MAX, Duration::from_secs(3600));
        (fresh, reused)
    });

    let engine = Engine::new(&Config::new()).unwrap();
    let plain = Component::new(&engine, &component).unwrap();
    let mut linker = Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.define_unknown_imports_as_traps(&plain).unwrap();
    let pre = StreamFunctionPre::new(linker.instantiate_pre(&plain).unwrap()).unwrap();

    let mut group = c.benchmark_group("one no-op record");
    group.bench_function("plain wasmtime, on-demand, fresh instance", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = Store::new(&engine, Plain { ctx: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
            let instance = pre.instantiate_async(&mut store).await.unwrap();
            instance.call_handle(&mut store, &ok).await.unwrap().unwrap();
        })
    });
    group.bench_function("runnel, fresh instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(fresh.handle(&ok).await, Outcome::Handled)) })
    });
    group.bench_function("runnel, reused instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(reused.handle(&ok).await, Outcome::Handled)) })
    });
    group.finish();

    // The same no-op, 64 records per call of handle-batch (criterion's time
    // is per batch: divide by 64 for a record), next to 64 calls of handle.
    let batch: Vec<Message> = (0..64).map(|_| ok.clone()).collect();
    let calls: Vec<Calls> = (0..64).map(|_| Calls::unjournaled("probe".into())).collect();
    let mut group = c.benchmark_group("64 no-op records");
    group.bench_function("runnel, fresh instance per record", |b| {
        b.to_async(&rt).iter(|| async {
            for message in &batch {
                assert!(matches!(fresh.handle(message).await, Outcome::Handled))
            }
        })
    });
    group.bench_function("runnel, one fresh instance, one handle-batch", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(fresh.run_batch(&batch, &calls).await.outcome, Outcome::Handled)) })
    });
    group.bench_function("runnel, reused instance, handle per record", |b| {
        b.to_async(&rt).iter(|| async {
            for message in &batch {
                assert!(matches!(reused.handle(message).await, Outcome::Handled))
            }
        })
    });
    group.bench_function("runnel, reused instance, one handle-batch", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(reused.run_batch(&batch, &calls).await.outcome, Outcome::Handled)) })
    });
    group.finish();
    // The functions hold the mail pool, which must be dropped within the runtime.
    rt.block_on(async move { drop((fresh, reused)) });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
