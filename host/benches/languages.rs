//! The cost of a function in each language, measured by `scripts/bench`
//! (release build, real servers): component size, compile time, load from
//! the compiled cache, a fresh instance + call (p50/p99), a reused instance
//! per call, and records/s through the store-alert flow (broker → function
//! → database + SMTP) with the language's `store-alert-to-email`. Rust is
//! the baseline each other language is compared with, in the same run.
//!
//! Reads RUNNEL_BENCH_FIXTURES_DIR (the probes), RUNNEL_BENCH_EXAMPLES_DIR
//! and RUNNEL_BENCH_FUNCTIONS_DIR (the store-alert functions), RUNNEL_BENCH_HOST
//! (the host to start) and the servers' RUNNEL_* variables.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use support::{BenchHost, env, micros, percentile, read, time_each, unique};

use runnel::platform::{
    capabilities::{Grants, ManifestGrants, Services, mail::Mail},
    kafka::{Event, EventProducer},
    runtime::{Limits, Message, Outcome, Runtime},
};

fn message(payload: &str) -> Message {
    Message::with_payload("bench", payload)
}

async fn runtime(compiled_dir: Option<PathBuf>) -> Runtime {
    let database = runnel::platform::storage::connect(&env("RUNNEL_MONGODB_URI"), "bench", Duration::from_secs(10))
        .await
        .unwrap();
    let mail = Mail::new(&env("RUNNEL_SMTP_URL"), "bench@example.com").unwrap();
    Runtime::new(Services::new(database, mail, Duration::from_secs(5)), Limits::default(), compiled_dir).unwrap()
}

fn no_grants(rt: &Runtime) -> Grants {
    rt.services().resolve("bench", &ManifestGrants::default(), &|_| None).unwrap()
}

struct Row {
    language: &'static str,
    size: usize,
    compile: Duration,
    load_cached: Duration,
    fresh_p50: Duration,
    fresh_p99: Duration,
    reused: Duration,
    records_per_s: f64,
}

/// Times `calls` calls of the probe's no-op `ok`; returns them sorted.
async fn calls(f: &runnel::platform::runtime::Function, calls: usize) -> Vec<Duration> {
    let ok = message("ok");
    for _ in 0..calls.min(20) {
        assert!(matches!(f.handle(&ok).await, Outcome::Handled)); // warm-up
    }
    let mut times = Vec::new();
    time_each(calls, &mut times, async || {
        let outcome = f.handle(&ok).await;
        assert!(matches!(outcome, Outcome::Handled), "{outcome:?}");
    })
    .await;
    times.sort();
    times
}

async fn measure_runtime(language: &'static str, probe: &str, n: usize) -> Row {
    let component = read("RUNNEL_BENCH_FIXTURES_DIR", &format!("{probe}.wasm"));
    let cache = std::env::temp_dir().join(format!("runnel-bench-compiled-{}", uuid::Uuid::new_v4().simple()));

    let rt = runtime(Some(cache.clone())).await;
    let started = Instant::now();
    let f = rt.load(probe, &component, no_grants(&rt)).await.unwrap();
    let compile = started.elapsed();
    drop((f, rt));
    // The compiled component is written in the background once it is loaded.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_dir(&cache).unwrap().flatten().any(|e| e.path().extension().is_some_and(|x| x == "cwasm")) {
        assert!(Instant::now() < deadline, "{probe}: the compiled component never reached the cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A new runtime (a restarted host) finds it on disk.
    let rt = runtime(Some(cache.clone())).await;
    let started = Instant::now();
    let f = rt.load(probe, &component, no_grants(&rt)).await.unwrap();
    let load_cached = started.elapsed();

    let fresh = calls(&f, n).await;
    let reused = calls(&f.clone().reusing(u32::MAX, Duration::from_secs(3600)), n).await;
    let _ = std::fs::remove_dir_all(cache);
    Row {
        language,
        size: component.len(),
        compile,
        load_cached,
        fresh_p50: percentile(&fresh, 0.5),
        fresh_p99: percentile(&fresh, 0.99),
        reused: percentile(&reused, 0.5),
        records_per_s: 0.0,
    }
}

/// Starts the host with the language's store-alert-to-email reading a
/// topic of its own, produces `n` store alerts and waits until the function
/// handled them all; records per second from the first produce.
async fn flow(language: &str, component: &[u8], manifest: &str, n: u64) -> f64 {
    let topic = format!("bench-{language}-{}", uuid::Uuid::new_v4().simple());
    let manifest = manifest
        .replace("topic = \"store-alerts-topic\"", &format!("topic = \"{topic}\""))
        .replace("group = \"store-alerts\"", &format!("group = \"{topic}\""));
    let dir = std::env::temp_dir().join(&topic);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("store-alert-to-email.wasm"), component).unwrap();
    std::fs::write(dir.join("store-alert-to-email.toml"), manifest).unwrap();
    let database = unique("bench").replace('-', "_");
    let (host, _) = BenchHost::start(
        &database,
        &[("RUNNEL_FUNCTIONS_DIR", dir.to_str().unwrap()), ("ALERT_DISTRIBUTION_LIST", "bench@example.com")],
    )
    .await;
    let producer = EventProducer::new(&runnel::platform::kafka::Cluster::new(&env("RUNNEL_KAFKA_BROKERS"), Vec::new()), Duration::from_secs(10), false).unwrap();
    let started = Instant::now();
    for i in 0..n {
        let body = serde_json::json!({ "storeName": format!("Bench {language} {i}"), "storeStatus": "CLOSED" });
        producer.publish(Event::json(&topic, &format!("store-{i}"), &body)).await.unwrap();
    }
    loop {
        if host.handled("store-alert-to-email").await.unwrap_or(0) >= n {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{language}: not all {n} records handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(host);
    let _ = std::fs::remove_dir_all(dir);
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records: u64 = std::env::var("RUNNEL_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut rows = vec![
        measure_runtime("Rust (std)", "probe", 5000).await,
        measure_runtime("Python", "python-probe", 500).await,
        measure_runtime("JavaScript", "js-probe", 1000).await,
    ];
    let flows = [
        read("RUNNEL_BENCH_FUNCTIONS_DIR", "store-alert-to-email.wasm"),
        read("RUNNEL_BENCH_EXAMPLES_DIR", "python-store-alert-to-email.wasm"),
        read("RUNNEL_BENCH_EXAMPLES_DIR", "js-store-alert-to-email.wasm"),
    ];
    let manifest = String::from_utf8(read("RUNNEL_BENCH_FUNCTIONS_DIR", "store-alert-to-email.toml")).unwrap();
    for ((row, component), slug) in rows.iter_mut().zip(&flows).zip(["rust", "python", "js"]) {
        row.records_per_s = flow(slug, component, &manifest, records).await;
        eprintln!("{}: {:.0} records/s", row.language, row.records_per_s);
    }

    println!("| language | component | compile | load from cache | fresh instance + call p50 / p99 | reused instance, per call | store-alert flow |");
    println!("|---|---|---|---|---|---|---|");
    let rust_rate = rows[0].records_per_s;
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {} | {} | {} / {} | {} | {:.0} records/s ({:.2}× Rust) |",
            r.language,
            r.size as f64 / (1 << 20) as f64,
            micros(r.compile),
            micros(r.load_cached),
            micros(r.fresh_p50),
            micros(r.fresh_p99),
            micros(r.reused),
            r.records_per_s,
            r.records_per_s / rust_rate
        );
    }
    println!("\n({records} store alerts per language, one partition, fresh instance per record; the flow's components: \
              Rust {:.0} KiB, Python {:.1} MiB, JavaScript {:.1} MiB)",
        flows[0].len() as f64 / 1024.0, flows[1].len() as f64 / (1 << 20) as f64, flows[2].len() as f64 / (1 << 20) as f64);
}
