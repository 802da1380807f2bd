//! In-process micro-benchmarks, run by `scripts/bench instance`. First a
//! table of single calls, each timed alone (p50, p99): a fresh instance + a
//! no-op call of the no-op function (std Rust with `runnel-guest`, which
//! imports only what std needs) and of the Rust probe's `ok` (which links
//! every capability and the WASI it probes the sandbox with), by Runnel's
//! runtime and by plain wasmtime (its default on-demand allocator, WASI p2,
//! a new store per call), interleaved. Then criterion: one record, fresh
//! and reused, next to plain wasmtime in the same run; and 64 records
//! through `handle` one by one next to one `handle-batch` of 64.
//!
//! Reads RUNNEL_BENCH_FIXTURES_DIR. Nothing is granted, so no server is used.

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use runnel::platform::{
    capabilities::{ManifestGrants, Services, mail::Mail},
    journal::Calls,
    runtime::{Function, Limits, Message, Outcome, Runtime, bindings::StreamFunctionPre},
};
use wasmtime::{
    Config, Engine, Store,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The single calls timed per row: this many rounds of this many calls.
const CALL_ROUNDS: usize = 5;
const CALLS_PER_ROUND: usize = 4_000;

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

    let noop = support::read("RUNNEL_BENCH_FIXTURES_DIR", "noop.wasm");
    let (fresh, reused, noop_fresh, noop_reused) = rt.block_on(async {
        // A driver handle that never connects: no capability is granted.
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=100").await.unwrap();
        let mail = Mail::new("smtp://127.0.0.1:9", "bench@example.com").unwrap();
        let services = Services::new(client.database("bench"), mail, Duration::from_secs(1));
        let runtime = Runtime::new(services, Limits::default(), None).unwrap();
        let grants = runtime.services().resolve("probe", &ManifestGrants::default(), &|_| None).unwrap();
        let fresh = runtime.load("probe", &component, grants).await.unwrap();
        let reused = fresh.clone().reusing(u32::MAX, Duration::from_secs(3600));
        let grants = runtime.services().resolve("noop", &ManifestGrants::default(), &|_| None).unwrap();
        let noop_fresh = runtime.load("noop", &noop, grants).await.unwrap();
        let noop_reused = noop_fresh.clone().reusing(u32::MAX, Duration::from_secs(3600));
        (fresh, reused, noop_fresh, noop_reused)
    });

    let engine = Engine::new(&Config::new()).unwrap();
    // What a fresh instance wires: the functions and resources it imports.
    let mut imports = std::collections::HashMap::new();
    for (name, bytes) in [("probe", &component), ("noop", &noop)] {
        let count: usize = Component::new(&engine, bytes)
            .unwrap()
            .component_type()
            .imports(&engine)
            .map(|(_, item)| match item.ty {
                wasmtime::component::types::ComponentItem::ComponentInstance(i) => i.exports(&engine).count(),
                _ => 1,
            })
            .sum();
        imports.insert(name, count);
    }
    let plain_pre = |bytes: &[u8]| {
        let plain = Component::new(&engine, bytes).unwrap();
        let mut linker = Linker::<Plain>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        linker.define_unknown_imports_as_traps(&plain).unwrap();
        StreamFunctionPre::new(linker.instantiate_pre(&plain).unwrap()).unwrap()
    };
    let (pre, noop_pre) = (plain_pre(&component), plain_pre(&noop));
    let plain_call = async |pre: &StreamFunctionPre<Plain>| {
        let mut store = Store::new(&engine, Plain { ctx: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        instance.call_handle(&mut store, &ok).await.unwrap().unwrap();
    };

    // Each call timed alone: p50 and p99 of a fresh instance + call, for the
    // no-op function, the probe and plain wasmtime, interleaved in rounds.
    let (mut noop_calls, mut probe_calls) = (Vec::new(), Vec::new());
    let (mut plain_noop_calls, mut plain_calls) = (Vec::new(), Vec::new());
    let handled = async |f: &Function| assert!(matches!(f.handle(&ok).await, Outcome::Handled));
    rt.block_on(async {
        for _ in 0..CALL_ROUNDS {
            support::time_each(CALLS_PER_ROUND, &mut noop_calls, async || handled(&noop_fresh).await).await;
            support::time_each(CALLS_PER_ROUND, &mut probe_calls, async || handled(&fresh).await).await;
            support::time_each(CALLS_PER_ROUND, &mut plain_noop_calls, async || plain_call(&noop_pre).await).await;
            support::time_each(CALLS_PER_ROUND, &mut plain_calls, async || plain_call(&pre).await).await;
        }
    });
    println!("\n| a fresh instance + one no-op call, each call timed ({} calls, {CALL_ROUNDS} interleaved rounds) | p50 | p99 |", CALL_ROUNDS * CALLS_PER_ROUND);
    println!("|---|---|---|");
    for (what, mut times) in [
        (format!("Runnel, the no-op function (std Rust, runnel-guest; {} imports)", imports["noop"]), noop_calls),
        (format!("Runnel, the probe (std Rust, every capability; {} imports)", imports["probe"]), probe_calls),
        ("plain wasmtime (on-demand allocator, WASI p2, a new store), the no-op function".to_string(), plain_noop_calls),
        ("plain wasmtime, the probe".to_string(), plain_calls),
    ] {
        times.sort();
        println!("| {what} | {} | {} |", support::micros(support::percentile(&times, 0.5)), support::micros(support::percentile(&times, 0.99)));
    }
    println!();

    let mut group = c.benchmark_group("one no-op record");
    group.bench_function("plain wasmtime, on-demand, fresh instance", |b| {
        b.to_async(&rt).iter(|| plain_call(&pre))
    });
    group.bench_function("runnel, fresh instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(fresh.handle(&ok).await, Outcome::Handled)) })
    });
    group.bench_function("runnel, reused instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(reused.handle(&ok).await, Outcome::Handled)) })
    });
    group.bench_function("runnel, no-op function, fresh instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(noop_fresh.handle(&ok).await, Outcome::Handled)) })
    });
    group.bench_function("runnel, no-op function, reused instance", |b| {
        b.to_async(&rt).iter(|| async { assert!(matches!(noop_reused.handle(&ok).await, Outcome::Handled)) })
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
    rt.block_on(async move { drop((fresh, reused, noop_fresh, noop_reused)) });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
