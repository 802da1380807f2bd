//! The sandbox around functions, on the real runtime and a real database:
//! what a component may import, what its grants let it reach, and how traps,
//! runaway loops and memory hogs end. Drives the `probe` fixture
//! (tests/fixtures/probe), which does what each record's payload says.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use runnel::platform::{
    capabilities::{Grants, ManifestGrants, Services, mail::Mail},
    runtime::{HandlerError, Limits, Message, Outcome, Runtime},
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env("RUNNEL_TEST_FIXTURES_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The compiled components' cache scripts/test keeps, so that a Python or
/// JavaScript component is compiled once per run, not once per test.
fn compiled_dir() -> Option<PathBuf> {
    std::env::var_os("RUNNEL_COMPILED_DIR").map(PathBuf::from)
}

async fn runtime(limits: Limits) -> Runtime {
    let database = runnel::platform::storage::connect(
        &env("RUNNEL_MONGODB_URI"),
        &format!("test_{}", uuid::Uuid::new_v4().simple()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mail = Mail::new(&env("RUNNEL_SMTP_URL"), "probe@example.com").unwrap();
    Runtime::new(Services::new(database, mail, std::time::Duration::from_secs(5)), limits, compiled_dir()).unwrap()
}

fn message(payload: &str) -> Message {
    Message::with_payload("probe", payload)
}

/// The grants of a manifest's `[capabilities]` table, given as TOML.
fn grants_from(rt: &Runtime, toml: &str) -> Grants {
    let table: ManifestGrants = toml::from_str(toml).unwrap();
    rt.services().resolve("probe", &table, &|_| None).unwrap()
}

fn grants(rt: &Runtime) -> Grants {
    grants_from(
        rt,
        "[documents]\nread = ['readable']\nwrite = ['writable']\n[config.k]\nvalue = 'v'\n",
    )
}

/// The text a probe reported through a `give-up`.
fn reported(outcome: Outcome) -> String {
    match outcome {
        Outcome::Declined(HandlerError::GiveUp(text)) => text,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_more_than_wasi_p2_is_refused_naming_the_import() {
    let rt = runtime(Limits::default()).await;
    let error = rt.load("keyvalue-importer", &fixture("keyvalue-importer"), grants_from(&rt, "")).await.err().unwrap();
    let text = format!("{error:#}");
    assert!(text.contains("wasi:keyvalue/store@0.2.0-draft"), "{text}");
    assert!(text.contains("Runnel does not give"), "{text}");
}

/// The same probe in each language: the sandbox refuses files, the
/// environment and sockets, bounds what stdout keeps, and the host goes on.
async fn the_sandbox_holds(probe: &str) {
    let rt = runtime(Limits::default()).await;
    let f = rt.load(probe, &fixture(probe), grants(&rt)).await.unwrap();
    let run = |payload: String| {
        let f = f.clone();
        async move { reported(f.handle(&message(&payload)).await) }
    };
    // The SDK's update-each reaches the host, which checks the grant.
    let refused = run("update-each:readable".into()).await;
    assert!(refused.starts_with("Err(") && refused.contains("not granted"), "{probe}: {refused}");
    let updated = run("update-each:writable".into()).await;
    assert!(updated.starts_with("Ok(") && updated.contains("matched"), "{probe}: {updated}");
    // A file the host can read, and a port it listens on.
    let host_file = std::env::current_exe().unwrap().display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let read = run(format!("read-file:{host_file}")).await;
    assert!(read.starts_with("Err("), "{probe} read a file of the host: {read}");
    let read = run("read-file:/etc/hostname".into()).await;
    assert!(read.starts_with("Err("), "{probe} read /etc/hostname: {read}");
    let env = run("env:RUNNEL_MONGODB_URI".into()).await;
    assert!(env.starts_with("Err(") && !env.contains("mongodb://"), "{probe} read the environment: {env}");
    // Refused with an error, or (JavaScript's `fetch`, whose HTTP imports
    // the build stubs out) a trap.
    match f.handle(&message(&format!("connect:127.0.0.1:{port}"))).await {
        Outcome::Declined(HandlerError::GiveUp(text)) => assert!(text.starts_with("Err("), "{probe} opened a socket: {text}"),
        Outcome::Failed(_) => {}
        other => panic!("{probe}: connecting ended with {other:?}"),
    }
    assert!(listener.accept().is_err(), "{probe}: a connection reached the host's listener");

    // 10 MiB to stdout: the call ends normally, and only the bound is kept.
    let printed = f.invoke(&message("print:10")).await;
    assert!(matches!(printed.outcome, Outcome::Handled), "{probe}: {:?}", printed.outcome);
    let kept: usize = printed.logs.iter().map(|line| line.message.len()).sum();
    assert!(kept <= 2 * runnel::platform::sandbox::OUTPUT_KEPT, "{probe} kept {kept} bytes of output");
    assert!(printed.logs.iter().any(|line| line.message.contains("bytes of stdout not kept")), "{probe}");

    // The host and the function are still fine.
    assert!(matches!(f.handle(&message("ok")).await, Outcome::Handled));
    assert!(matches!(f.handle(&message("bad-input")).await, Outcome::Declined(HandlerError::BadInput(_))));
    assert!(matches!(f.handle(&message("retry")).await, Outcome::Declined(HandlerError::RetryLater(_))));
    let Outcome::Failed(_) = f.handle(&message("trap")).await else { panic!("{probe}: an uncaught error must trap") };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_holds_for_rust() {
    the_sandbox_holds("probe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_holds_for_python() {
    the_sandbox_holds("python-probe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_holds_for_javascript() {
    the_sandbox_holds("js-probe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_reach_the_host_as_typed_outcomes() {
    let rt = runtime(Limits::default()).await;
    let f = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap();
    assert!(matches!(f.handle(&message("ok")).await, Outcome::Handled));
    assert!(matches!(f.handle(&message("bad-input")).await, Outcome::Declined(HandlerError::BadInput(_))));
    assert!(matches!(f.handle(&message("retry")).await, Outcome::Declined(HandlerError::RetryLater(_))));
    assert!(matches!(f.handle(&message("give-up")).await, Outcome::Declined(HandlerError::GiveUp(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_limited_to_the_grants() {
    let rt = runtime(Limits::default()).await;
    let f = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap();
    let run = |payload: &'static str| {
        let f = f.clone();
        async move { reported(f.handle(&message(payload)).await) }
    };
    assert_eq!(run("read:readable").await, "Ok([])");
    assert!(run("read:secret").await.contains("NotPermitted"));
    assert!(run("write:readable").await.contains("NotPermitted"));
    assert!(run("write:writable").await.starts_with("Ok("));
    // Written, then readable through the write grant.
    assert!(run("read:writable").await.contains("probe"));
    // Several updates in one call: refused without the write grant, summed
    // when they apply, and stopped at the first the server refuses, naming it.
    assert!(run("update-each:readable").await.contains("NotPermitted"));
    assert_eq!(run("update-each:writable").await, "Ok(UpdateResult { matched: 2, modified: 2 })");
    let written = run("read:writable").await;
    assert!(written.contains(r#"\"seen\":1"#) && written.contains(r#"\"count\":1"#), "{written}");
    let refused = run("update-each-bad:writable").await;
    assert!(refused.contains("Invalid(\"update 1: "), "{refused}");
    let written = run("read:writable").await;
    assert!(written.contains(r#"\"before\":1"#) && !written.contains("after"), "{written}");
    assert!(run("mail:someone@example.com").await.contains("NotPermitted"));
    assert_eq!(run("config:k").await, "Some(\"v\")");
    assert_eq!(run("config:PATH").await, "None");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_loops_and_memory_hogs_end_the_call_not_the_host() {
    let limits = Limits { timeout: Duration::from_secs(1), max_memory_bytes: 32 << 20 };
    let rt = runtime(limits).await;
    let f = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap();

    let Outcome::Failed(e) = f.handle(&message("trap")).await else { panic!("a panic must fail the call") };
    assert!(format!("{e:#}").contains("unreachable"), "{e:#}");

    let started = Instant::now();
    let Outcome::Failed(e) = f.handle(&message("loop")).await else { panic!("a loop must fail the call") };
    let took = started.elapsed();
    assert!(format!("{e:#}").contains("ran longer than"), "{e:#}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");

    let Outcome::Failed(_) = f.handle(&message("grow")).await else { panic!("256 MiB must fail under a 32 MiB cap") };

    // Every call gets a fresh instance: the function still works.
    assert!(matches!(f.handle(&message("ok")).await, Outcome::Handled));
}

/// The n of the probe's `count n` log line.
async fn count(f: &runnel::platform::runtime::Function) -> String {
    let invocation = f.invoke(&message("count")).await;
    assert!(matches!(invocation.outcome, Outcome::Handled), "{:?}", invocation.outcome);
    invocation.logs.iter().find_map(|l| l.message.strip_prefix("count ").map(str::to_owned)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_share_nothing_and_reused_ones_are_bounded() {
    let rt = runtime(Limits::default()).await;
    let fresh = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(count(&fresh).await, "1", "a fresh instance per message");
    }

    // Up to three messages per instance.
    let reused = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap().reusing(3, Duration::from_secs(60));
    let counts: Vec<String> = counts(&reused, 4).await;
    assert_eq!(counts, ["1", "2", "3", "1"]);
    // Anything but `handled` throws the instance away.
    assert!(matches!(reused.handle(&message("bad-input")).await, Outcome::Declined(_)));
    assert_eq!(count(&reused).await, "1");
    let Outcome::Failed(_) = reused.handle(&message("trap")).await else { panic!("a trap") };
    assert_eq!(count(&reused).await, "1");
    // And so does age.
    let aged = rt.load("probe", &fixture("probe"), grants(&rt)).await.unwrap().reusing(100, Duration::from_secs(2));
    assert_eq!(count(&aged).await, "1");
    assert_eq!(count(&aged).await, "2");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&aged).await, "1");
}

async fn counts(f: &runnel::platform::runtime::Function, n: usize) -> Vec<String> {
    let mut counts = Vec::new();
    for _ in 0..n {
        counts.push(count(f).await);
    }
    counts
}
