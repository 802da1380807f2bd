//! Functions in Python and JavaScript, on real servers: each language's
//! `store-alert-to-email` (examples/python, examples/js) deployed in place
//! of the Rust one passes the same end-to-end flow; compiled components are
//! cached, so a host starts without compiling again; and compiling a large
//! component at deploy does not stall the rest of the host.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use support::{
    Host, Servers,
    store_alert_flow::{DISTRIBUTION_LIST, store_alert_flow},
};

/// The built example `<language>-store-alert-to-email`: component and manifest.
fn example(language: &str) -> (Vec<u8>, String) {
    let dir = PathBuf::from(std::env::var("RUNNEL_TEST_EXAMPLES_DIR").expect("RUNNEL_TEST_EXAMPLES_DIR: run scripts/test"));
    let read = |ext: &str| dir.join(format!("{language}-store-alert-to-email.{ext}"));
    let wasm = std::fs::read(read("wasm")).unwrap_or_else(|e| panic!("{}: {e}", read("wasm").display()));
    (wasm, std::fs::read_to_string(read("toml")).unwrap())
}

/// A functions folder holding only `name`.
fn functions_dir(name: &str, component: &[u8], manifest: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runnel-fns-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), component).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), manifest).unwrap();
    dir
}

fn scratch_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("runnel-{what}-{}", uuid::Uuid::new_v4().simple()))
}

/// The run's cache of compiled components (scripts/test sets it), so that
/// each component is compiled once per run.
fn shared_compiled_dir() -> String {
    std::env::var("RUNNEL_COMPILED_DIR").unwrap_or_else(|_| scratch_dir("compiled").display().to_string())
}

/// Must show: `store-alert-to-email` in Python and in JavaScript, each
/// deployed in place of the Rust one, passes the same end-to-end test (one
/// StoreAlert and one mail per update, bad input dead-lettered). The
/// languages run one after the other in the flow's consumer group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_alert_to_email_in_python_and_javascript_passes_the_flow() {
    let servers = Servers::from_env();
    let compiled = shared_compiled_dir();
    for language in ["python", "js"] {
        let (component, manifest) = example(language);
        let dir = functions_dir("store-alert-to-email", &component, &manifest);
        let env = [
            ("RUNNEL_FUNCTIONS_DIR", dir.to_str().unwrap()),
            ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST),
            ("RUNNEL_COMPILED_DIR", compiled.as_str()),
        ];
        let host = Host::start(&servers, &env).await;
        // The running version is this language's component.
        let function = host.get_json("/admin/functions/store-alert-to-email").await;
        let sizes: Vec<u64> = function["versions"].as_array().unwrap().iter().filter_map(|v| v["size"].as_u64()).collect();
        assert_eq!(sizes, [component.len() as u64], "{language}: {function}");
        let took = store_alert_flow(&servers, &host).await;
        println!("{language}: a PUT to its mail in {} ms", took.as_millis());
        host.terminate().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Must show: start-up with a compiled Python component in the cache, and
/// without. Both hosts deploy the Python function from their functions
/// folder (on a topic of its own); the second finds it compiled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_compiled_component_starts_without_compiling() {
    let servers = Servers::from_env();
    let (component, manifest) = example("python");
    let topic = format!("startup-{}", uuid::Uuid::new_v4().simple());
    let manifest = manifest
        .replace("topic = \"store-alerts-topic\"", &format!("topic = \"{topic}\""))
        .replace("group = \"store-alerts\"", &format!("group = \"{topic}\""));
    let dir = functions_dir("store-alert-to-email", &component, &manifest);
    let compiled = scratch_dir("compiled");
    let env = [
        ("RUNNEL_FUNCTIONS_DIR", dir.to_str().unwrap()),
        ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST),
        ("RUNNEL_COMPILED_DIR", compiled.to_str().unwrap()),
    ];
    let database = format!("test_{}", uuid::Uuid::new_v4().simple());

    let started = Instant::now();
    let host = Host::start_on(&servers, &database, &env).await;
    let without_cache = started.elapsed();
    host.terminate().await;
    let cached: Vec<_> = std::fs::read_dir(&compiled).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache: {cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"), "{cached:?}");

    let started = Instant::now();
    let host = Host::start_on(&servers, &database, &env).await;
    let with_cache = started.elapsed();
    println!(
        "start to ready with the Python function ({:.1} MiB): without the cache {} ms, with it {} ms",
        component.len() as f64 / (1 << 20) as f64,
        without_cache.as_millis(),
        with_cache.as_millis()
    );
    // Compiling takes seconds; loading from the cache, milliseconds. Half is
    // far from either.
    assert!(with_cache * 2 < without_cache, "the cache did not help: {with_cache:?} vs {without_cache:?}");
    assert!(host.log_text().contains("store-alert-to-email"), "{}", host.log_text());
    host.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(compiled);
}

/// Must show: deploying a 20 MB component is not a stall of anything else.
/// While a host compiles the Python component, its API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_at_deploy_does_not_stall_the_api() {
    let servers = Servers::from_env();
    let compiled = scratch_dir("compiled");
    let env = [("RUNNEL_COMPILED_DIR", compiled.to_str().unwrap()), ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST)];
    let host = Host::start(&servers, &env).await;
    let (component, manifest) = example("python");
    let name = format!("stall-{}", uuid::Uuid::new_v4().simple());
    let manifest = manifest
        .replace("name = \"store-alert-to-email\"", &format!("name = \"{name}\""))
        .replace("topic = \"store-alerts-topic\"", &format!("topic = \"{name}\""))
        .replace("group = \"store-alerts\"", &format!("group = \"{name}\""));

    let client = host.client.clone();
    let url = host.url("/api/stores?size=1");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let r = client.get(&url).send().await.unwrap();
                assert!(r.status().is_success());
                latencies.push(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    };
    let started = Instant::now();
    let (status, body) = host.deploy(&name, &manifest, &component).await;
    let deploy_took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.is_success(), "{status}: {body}");
    let mut latencies = prober.await.unwrap();
    latencies.sort();
    let worst = *latencies.last().unwrap();
    println!(
        "deploying {:.1} MiB of Python took {} ms; {} API requests meanwhile, p50 {} ms, worst {} ms",
        component.len() as f64 / (1 << 20) as f64,
        deploy_took.as_millis(),
        latencies.len(),
        latencies[latencies.len() / 2].as_millis(),
        worst.as_millis()
    );
    assert!(latencies.len() >= 10, "the API was probed {} times", latencies.len());
    // A stall would be the whole compile; the API may slow while both cores
    // compile (and the other tests here with them), but never for half of it.
    assert!(worst * 2 < deploy_took, "the API stalled for {worst:?} of a {deploy_took:?} deploy");
    let _ = std::fs::remove_dir_all(compiled);
}
