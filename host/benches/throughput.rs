//! Throughput, measured by `scripts/bench` (release build, real servers):
//! every Runnel figure next to its baseline from the same run, the two
//! interleaved and the median of three taken.
//!
//! - a no-op function (std Rust, `runnel-guest`) against a bare rdkafka
//!   consumer reading the same topic with the same settings (offsets stored
//!   after each record, committed in the background), on 1 and 4
//!   partitions, with a fresh instance per record and with reuse; also the
//!   CPU time per record of the host process (all threads, from the
//!   assignment to the last record, `/proc/<pid>/stat`) against that of the
//!   bare consumer's process, which a loaded machine sways less than rates;
//! - the Python and JavaScript probes' no-op `ok`, against the Rust probe's;
//! - person-to-comicbook against a native consumer doing the same updates
//!   with the same concurrency, and against a native consumer doing what
//!   the function did before (eight `update_many`, one after the other, one
//!   event at a time) on a copy without the host's indexes and on one with;
//! - `GET /api/stores/{id}` with 16 clients against the driver's `find_one`;
//! - PUT → effect for both flows; resident memory; start to ready with both
//!   functions from the compiled cache; two hosts in one group.
//!
//! Reads RUNNEL_BENCH_FIXTURES_DIR, RUNNEL_BENCH_FUNCTIONS_DIR, RUNNEL_BENCH_HOST
//! and the servers' RUNNEL_* variables; RUNNEL_BENCH_RECORDS (default 100000)
//! sets the records of the no-op runs, RUNNEL_BENCH_ROWS (a comma-separated
//! list of `start`, `noop`, `languages`, `hosts`, `p2c`, `get`, `latency`;
//! default all) the rows measured, RUNNEL_BENCH_IN_FLIGHT (default 8) the
//! no-op function's `max-in-flight`, RUNNEL_BENCH_BATCH (default 64) the
//! `max-batch` of the no-op rows with batches, RUNNEL_BENCH_LOG (default `warn`) the
//! hosts' RUNNEL_LOG, RUNNEL_BENCH_PARTITIONS (default `1,4`) the partition
//! counts of the no-op rows, RUNNEL_BENCH_ROUNDS (default 3) the rounds whose median
//! is taken; RUNNEL_BENCH_PERF (a directory) records a `perf` profile of the
//! host during each no-op row (see [`Profile`]).

mod support;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::StreamExt;
use mongodb::bson::{Document, doc};
use rdkafka::{
    ClientConfig, Message as _,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{Value, json};
use support::{BenchHost, Counters, Measured, env, median, micros, percentile, rate_until_handled, read, unique};

const ROLES: [&str; 8] = ["WRITER", "ARTIST", "PENCILLER", "INKER", "COLORIST", "LETTERER", "COVER_ARTIST", "EDITOR"];
/// Concurrency of person-to-comicbook (its manifest's `max-in-flight`) and of its native baseline.
const P2C_IN_FLIGHT: usize = 8;

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", env("RUNNEL_KAFKA_BROKERS")).create().unwrap();
    for r in admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Produces `records` (key, payload) to `topic`, spread over its partitions by key.
async fn fill(topic: &str, records: impl Iterator<Item = (String, Vec<u8>)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("RUNNEL_KAFKA_BROKERS"))
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let sends: Vec<_> = records
        .map(|(key, payload)| {
            let producer = producer.clone();
            let topic = topic.to_string();
            async move {
                producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
            }
        })
        .collect();
    futures::stream::iter(sends).buffer_unordered(10_000).collect::<Vec<()>>().await;
}

/// Notes when the consumer's partitions were first assigned, and the CPU
/// time this process had used by then.
#[derive(Default)]
struct Assigned(std::sync::OnceLock<(Instant, f64)>);

impl rdkafka::ClientContext for Assigned {}

impl rdkafka::consumer::ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            self.0.get_or_init(|| (Instant::now(), support::cpu_seconds(std::process::id())));
        }
    }
}

/// A consumer with the trigger's settings.
fn consumer(group: &str) -> StreamConsumer<Assigned> {
    ClientConfig::new()
        .set("bootstrap.servers", env("RUNNEL_KAFKA_BROKERS"))
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "8192")
        .create_with_context(Assigned::default())
        .unwrap()
}

/// Records/s from the consumer's assignment to now, for `n` records.
fn since_assigned(consumer: &StreamConsumer<Assigned>, n: u64) -> f64 {
    n as f64 / consumer.context().0.get().expect("assigned").0.elapsed().as_secs_f64()
}

/// This process's CPU time per record since the consumer's assignment, in
/// µs, for `n` records (the benchmark does nothing else meanwhile).
fn cpu_since_assigned(consumer: &StreamConsumer<Assigned>, n: u64) -> f64 {
    let (_, at) = consumer.context().0.get().expect("assigned");
    (support::cpu_seconds(std::process::id()) - at) * 1e6 / n as f64
}

/// The bare consumer: reads `n` records of `topic` in a new group, storing
/// each offset; records/s from its assignment to the last record, and the
/// CPU time per record meanwhile.
async fn bare_consumer(topic: &str, n: u64) -> (f64, f64) {
    let consumer = consumer(&unique("bare"));
    consumer.subscribe(&[topic]).unwrap();
    for read in 0..n {
        let m = consumer.recv().await.unwrap();
        consumer.store_offset_from_message(&m).unwrap();
        std::hint::black_box((read, m.payload()));
    }
    (since_assigned(&consumer, n), cpu_since_assigned(&consumer, n))
}

/// The `max-batch` of the no-op rows measured with batches.
fn bench_batch() -> u32 {
    std::env::var("RUNNEL_BENCH_BATCH").map_or(64, |v| v.parse().expect("RUNNEL_BENCH_BATCH: a number"))
}

fn noop_manifest(name: &str, topic: &str, reuse: bool, batch: u32) -> String {
    let in_flight: u32 = std::env::var("RUNNEL_BENCH_IN_FLIGHT").map_or(8, |v| v.parse().expect("RUNNEL_BENCH_IN_FLIGHT: a number"));
    let mut manifest =
        format!("name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{}'\nmax-in-flight = {in_flight}\nmax-batch = {batch}\n", unique(name));
    if reuse {
        manifest.push_str("[reuse]\nmax-messages = 100000\nmax-seconds = 600\n");
    }
    manifest
}

/// A no-op function over the first `n` records of `topic`, on `hosts`.
async fn noop(hosts: &[&BenchHost], component: &[u8], topic: &str, reuse: bool, n: u64) -> Measured {
    noop_batched(hosts, component, topic, reuse, 1, n).await
}

/// The same, the function getting up to `batch` records a call.
async fn noop_batched(hosts: &[&BenchHost], component: &[u8], topic: &str, reuse: bool, batch: u32, n: u64) -> Measured {
    let name = unique("noop");
    let label = format!("{}-{}-batch{batch}", topic.rsplit_once('-').map_or(topic, |(t, _)| t), if reuse { "reused" } else { "fresh" });
    let profile = Profile::start(hosts[0], &label);
    hosts[0].deploy(&name, &noop_manifest(&name, topic, reuse, batch), component).await;
    let measured = rate_until_handled(hosts, &name, Counters::default(), n).await;
    drop(profile);
    hosts[0].undeploy(&name).await;
    measured
}

/// A `perf record` of the host while a no-op row runs, when
/// RUNNEL_BENCH_PERF names a directory: `<dir>/<row>.data` (the last
/// round's), for `perf report -i`. Stopped (and written) when dropped.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(host: &BenchHost, label: &str) -> Profile {
        let Ok(dir) = std::env::var("RUNNEL_BENCH_PERF") else { return Profile(None) };
        std::fs::create_dir_all(&dir).expect("RUNNEL_BENCH_PERF: a directory");
        let output = std::path::Path::new(&dir).join(format!("{label}.data"));
        let child = std::process::Command::new("perf")
            .args(["record", "--quiet", "-F", "999", "--call-graph", "dwarf", "-p", &host.pid().to_string(), "-o"])
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("RUNNEL_BENCH_PERF: perf on the PATH");
        Profile(Some(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

/// Partitions taken from a consumer in the middle of a run on one host,
/// where nothing should ever take them: the "lost assignments".
#[derive(Default)]
struct Lost {
    runs: u64,
    revocations: u64,
}

impl Lost {
    fn rate(&mut self, measured: Measured) -> f64 {
        self.count(measured).rate
    }

    fn count(&mut self, measured: Measured) -> Measured {
        self.runs += 1;
        self.revocations += measured.revocations;
        measured
    }
}

/// Comicbooks for `persons` persons, each in a few roles of a few books, in `database`.
fn comicbooks(persons: usize, books: usize) -> Vec<Document> {
    (0..books)
        .map(|b| {
            let mut roles = Document::new();
            for (r, role) in ROLES.iter().enumerate().filter(|(r, _)| (b + r) % 3 != 0) {
                let people: Vec<Document> = (0..2)
                    .map(|k| {
                        let p = (b * 7 + r * 3 + k) % persons;
                        doc! { "_id": format!("person-{p}"), "firstname": "First", "lastname": format!("Last {p}") }
                    })
                    .collect();
                roles.insert(*role, people);
            }
            doc! { "_id": format!("book-{b}"), "name": format!("Book {b}"), "persons": roles }
        })
        .collect()
}

fn person_event(i: usize, persons: usize) -> (String, Vec<u8>) {
    let id = format!("person-{}", i % persons);
    let body = json!({ "id": id, "firstname": format!("Renamed {i}"), "lastname": format!("Last {}", i % persons) });
    (id, serde_json::to_vec(&body).unwrap())
}

/// What a native person-to-comicbook consumer sends per event.
#[derive(Clone, Copy, PartialEq)]
enum P2cShape {
    /// The function's work: one `update` command of eight statements, one per role.
    OneRequest,
    /// The old function's: eight `update_many`, one after the other.
    EightRequests,
}

/// The native baseline of person-to-comicbook: a consumer that sends, for
/// each person event, the updates of `shape` with `in_flight` records at
/// once; records/s from its assignment to the last record.
async fn native_p2c(topic: &str, n: u64, database: &mongodb::Database, shape: P2cShape, in_flight: usize) -> f64 {
    let consumer = consumer(&unique("native-p2c"));
    consumer.subscribe(&[topic]).unwrap();
    let comicbooks = database.collection::<Document>("comicbooks");
    consumer
        .stream()
        .take(n as usize)
        .map(|m| {
            let m = m.unwrap();
            let person: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let (comicbooks, database) = (comicbooks.clone(), database.clone());
            async move {
                let id = person["id"].as_str().unwrap().to_string();
                let (first, last) = (person["firstname"].as_str().unwrap(), person["lastname"].as_str().unwrap());
                let rename = |role: &str| {
                    let set = doc! { "$set": { format!("persons.{role}.$[p].firstname"): first, format!("persons.{role}.$[p].lastname"): last } };
                    (doc! { format!("persons.{role}._id"): &id }, set, doc! { "p._id": &id })
                };
                match shape {
                    P2cShape::EightRequests => {
                        for role in ROLES {
                            let (filter, set, array_filter) = rename(role);
                            comicbooks.update_many(filter, set).array_filters(vec![array_filter]).await.unwrap();
                        }
                    }
                    P2cShape::OneRequest => {
                        let updates: Vec<Document> = ROLES
                            .iter()
                            .map(|role| {
                                let (q, u, array_filter) = rename(role);
                                doc! { "q": q, "u": u, "arrayFilters": [array_filter], "multi": true }
                            })
                            .collect();
                        let reply = database.run_command(doc! { "update": "comicbooks", "updates": updates, "ordered": true }).await.unwrap();
                        assert!(reply.get_array("writeErrors").is_err(), "{reply}");
                    }
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    since_assigned(&consumer, n)
}

/// `requests` GETs of `paths` with 16 clients at once; requests/s.
async fn http_gets(client: &reqwest::Client, urls: &[String], requests: usize) -> f64 {
    let started = Instant::now();
    futures::stream::iter((0..requests).map(|i| {
        let request = client.get(&urls[i % urls.len()]);
        async move {
            let r = request.send().await.unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    requests as f64 / started.elapsed().as_secs_f64()
}

async fn driver_finds(stores: &mongodb::Collection<Document>, ids: &[String], requests: usize) -> f64 {
    let started = Instant::now();
    futures::stream::iter((0..requests).map(|i| {
        let stores = stores.clone();
        let id = ids[i % ids.len()].clone();
        async move {
            assert!(stores.find_one(doc! { "_id": id }).await.unwrap().is_some());
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    requests as f64 / started.elapsed().as_secs_f64()
}

/// PUT → the store's alert mail in the Maildir, `samples` times; sorted.
async fn store_put_to_mail(host: &BenchHost, samples: usize) -> Vec<Duration> {
    let new_mail = std::path::Path::new(&env("RUNNEL_MAILDIR")).join("new");
    let mut seen: HashSet<std::ffi::OsString> =
        std::fs::read_dir(&new_mail).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    let mut times = Vec::new();
    for i in 0..samples {
        let name = unique(&format!("Bench store {i}"));
        let r = host.client.post(host.url("/api/stores")).json(&json!({ "name": name, "address": "1 Main Street", "status": "OPEN" })).send().await.unwrap();
        let mut store: Value = r.json().await.unwrap();
        store["status"] = json!("CLOSED");
        let started = Instant::now();
        let r = host.client.put(host.url(&format!("/api/stores/{}", store["id"].as_str().unwrap()))).json(&store).send().await.unwrap();
        assert!(r.status().is_success());
        'found: loop {
            assert!(started.elapsed() < Duration::from_secs(60), "no mail for {name}");
            for entry in std::fs::read_dir(&new_mail).into_iter().flatten().flatten() {
                if seen.insert(entry.file_name()) && std::fs::read_to_string(entry.path()).unwrap_or_default().contains(&name) {
                    break 'found;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    times
}

/// PUT of a person → every comicbook holding them renamed, `samples` times; sorted.
async fn person_put_to_comicbook(host: &BenchHost, database: &mongodb::Database, samples: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    let comicbooks = database.collection::<Document>("comicbooks");
    for i in 0..samples {
        let person: Value = host.client.post(host.url("/api/persons")).json(&json!({ "firstname": "Jack", "lastname": "Kirby" })).send().await.unwrap().json().await.unwrap();
        let id = person["id"].as_str().unwrap().to_string();
        let embedded = json!({ "id": id, "firstname": "Jack", "lastname": "Kirby" });
        let r = host.client.post(host.url("/api/comicbooks")).json(&json!({ "name": format!("Latency {i}"), "persons": { "INKER": [embedded] } })).send().await.unwrap();
        assert!(r.status().is_success());
        let lastname = format!("Kirby {i}");
        let started = Instant::now();
        let r = host.client.put(host.url(&format!("/api/persons/{id}"))).json(&json!({ "firstname": "Jack", "lastname": lastname })).send().await.unwrap();
        assert!(r.status().is_success());
        loop {
            assert!(started.elapsed() < Duration::from_secs(60), "person {id} never renamed");
            if comicbooks.find_one(doc! { "persons.INKER.lastname": &lastname }).await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    times
}

struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, measure: impl Into<String>, runnel: impl Into<String>, baseline: impl Into<String>, ratio: impl Into<String>) {
        self.0.push([measure.into(), runnel.into(), baseline.into(), ratio.into()]);
    }

    fn print(&self) {
        println!("| measure | Runnel | baseline in the same run | ratio |");
        println!("|---|---|---|---|");
        for [a, b, c, d] in &self.0 {
            println!("| {a} | {b} | {c} | {d} |");
        }
    }
}

/// Whether RUNNEL_BENCH_ROWS asks for the rows of `section`.
fn wanted(section: &str) -> bool {
    std::env::var("RUNNEL_BENCH_ROWS").map_or(true, |rows| rows.split(',').any(|r| r.trim() == section))
}

fn per_s(rate: f64) -> String {
    format!("{rate:.0}/s")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::var("RUNNEL_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rounds: usize = std::env::var("RUNNEL_BENCH_ROUNDS").map_or(3, |v| v.parse().expect("RUNNEL_BENCH_ROUNDS: a number"));
    // The no-op rows' function: std Rust with runnel-guest, handling every
    // record. The language rows compare each language's probe with the Rust
    // probe (the same commands; it links every capability).
    let noop_fn = read("RUNNEL_BENCH_FIXTURES_DIR", "noop.wasm");
    let probe = read("RUNNEL_BENCH_FIXTURES_DIR", "probe.wasm");
    let mut table = Table(Vec::new());
    let mut lost = Lost::default();

    // Topics of no-op records, keys spread over 1,024 values.
    let (one, four) = (unique("bench-1p"), unique("bench-4p"));
    if wanted("noop") || wanted("languages") || wanted("hosts") {
        create_topic(&one, 1).await;
        create_topic(&four, 4).await;
        for topic in [&one, &four] {
            fill(topic, (0..n).map(|i| (format!("k{}", i % 1024), b"ok".to_vec()))).await;
        }
        eprintln!("filled two topics with {n} records each");
    }

    let mongo = mongodb::Client::with_uri_str(env("RUNNEL_MONGODB_URI")).await.unwrap();
    let functions_dir = env("RUNNEL_BENCH_FUNCTIONS_DIR");
    let compiled = std::env::temp_dir().join(unique("runnel-bench-compiled"));
    let compiled_dir = compiled.to_str().unwrap().to_string();
    let database = unique("bench").replace('-', "_");
    let host_vars = [
        ("RUNNEL_FUNCTIONS_DIR", functions_dir.as_str()),
        ("RUNNEL_COMPILED_DIR", compiled_dir.as_str()),
        ("ALERT_DISTRIBUTION_LIST", "bench@example.com"),
    ];
    // A first start compiles both functions and keeps them; three more
    // start from the compiled cache (and the versions in the database).
    let (host, cold) = BenchHost::start(&database, &host_vars).await;
    drop(host);
    let mut warm = Vec::new();
    for _ in 0..if wanted("start") { rounds } else { 0 } {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (host, ready) = BenchHost::start(&database, &host_vars).await;
        warm.push(ready);
        drop(host);
    }
    warm.sort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (host, _) = BenchHost::start(&database, &host_vars).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = host.rss_mib();

    // No-op: bare consumer and function, interleaved.
    let mut rss_after = None;
    let partition_counts = std::env::var("RUNNEL_BENCH_PARTITIONS").unwrap_or_else(|_| "1,4".into());
    let partition_counts: Vec<u32> =
        partition_counts.split(',').map(|p| p.trim().parse().expect("RUNNEL_BENCH_PARTITIONS: 1, 4 or 1,4")).collect();
    for (topic, partitions) in [(&one, 1), (&four, 4)].into_iter().filter(|(_, p)| wanted("noop") && partition_counts.contains(p)) {
        let (mut bare, mut fresh, mut reused) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fresh_batched, mut reused_batched) = (Vec::new(), Vec::new());
        let (mut fresh_batched_cpu, mut reused_batched_cpu) = (Vec::new(), Vec::new());
        let (mut bare_cpu, mut fresh_cpu, mut reused_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (rate, cpu) = bare_consumer(topic, n).await;
            bare.push(rate);
            bare_cpu.push(cpu);
            let measured = lost.count(noop(&[&host], &noop_fn, topic, false, n).await);
            fresh.push(measured.rate);
            fresh_cpu.push(measured.cpu_us);
            if round == 0 && partitions == 1 {
                rss_after = Some(host.rss_mib());
                let parts: Vec<String> = host.rss_breakdown().iter().map(|(k, mib)| format!("{k} {mib:.1}")).collect();
                eprintln!("RSS after {n} no-op records, MiB: {}", parts.join(", "));
            }
            let measured = lost.count(noop(&[&host], &noop_fn, topic, true, n).await);
            reused.push(measured.rate);
            reused_cpu.push(measured.cpu_us);
            let measured = lost.count(noop_batched(&[&host], &noop_fn, topic, false, bench_batch(), n).await);
            fresh_batched.push(measured.rate);
            fresh_batched_cpu.push(measured.cpu_us);
            let measured = lost.count(noop_batched(&[&host], &noop_fn, topic, true, bench_batch(), n).await);
            reused_batched.push(measured.rate);
            reused_batched_cpu.push(measured.cpu_us);
            eprintln!(
                "no-op, {partitions} partition(s), round {round}: batches of up to {}: fresh {:.0}/s ({:.2} µs), reused {:.0}/s ({:.2} µs)",
                bench_batch(),
                fresh_batched[round],
                fresh_batched_cpu[round],
                reused_batched[round],
                reused_batched_cpu[round]
            );
            eprintln!(
                "no-op, {partitions} partition(s), round {round}: bare {:.0}/s ({:.2} µs CPU per record), fresh {:.0}/s ({:.2} µs), reused {:.0}/s ({:.2} µs)",
                bare[round], bare_cpu[round], fresh[round], fresh_cpu[round], reused[round], reused_cpu[round]
            );
        }
        let bare = median(&mut bare);
        let (fresh, reused) = (median(&mut fresh), median(&mut reused));
        table.row(format!("no-op function, {partitions} partition(s), fresh instance per record"), per_s(fresh), format!("bare rdkafka consumer: {}", per_s(bare)), format!("**{:.2}**", fresh / bare));
        table.row(format!("no-op function, {partitions} partition(s), reused instances"), per_s(reused), format!("bare rdkafka consumer: {}", per_s(bare)), format!("**{:.2}**", reused / bare));
        let (fresh_batched, reused_batched) = (median(&mut fresh_batched), median(&mut reused_batched));
        let batch = bench_batch();
        table.row(format!("no-op function, {partitions} partition(s), fresh instance per batch (max-batch {batch})"), per_s(fresh_batched), format!("bare rdkafka consumer: {}", per_s(bare)), format!("**{:.2}**", fresh_batched / bare));
        table.row(format!("no-op function, {partitions} partition(s), reused instances, batches (max-batch {batch})"), per_s(reused_batched), format!("bare rdkafka consumer: {}", per_s(bare)), format!("**{:.2}**", reused_batched / bare));
        let (bare_cpu, fresh_cpu, reused_cpu) = (median(&mut bare_cpu), median(&mut fresh_cpu), median(&mut reused_cpu));
        table.row(
            format!("CPU per no-op record, {partitions} partition(s), fresh / reused (host process, all threads)"),
            format!("{fresh_cpu:.2} µs / {reused_cpu:.2} µs"),
            format!("bare rdkafka consumer's process: {bare_cpu:.2} µs"),
            format!("{:.2} / {:.2}", bare_cpu / fresh_cpu, bare_cpu / reused_cpu),
        );
        let (fresh_batched_cpu, reused_batched_cpu) = (median(&mut fresh_batched_cpu), median(&mut reused_batched_cpu));
        table.row(
            format!("CPU per no-op record, {partitions} partition(s), batches (max-batch {batch}), fresh / reused"),
            format!("{fresh_batched_cpu:.2} µs / {reused_batched_cpu:.2} µs"),
            format!("bare rdkafka consumer's process: {bare_cpu:.2} µs"),
            format!("{:.2} / {:.2}", bare_cpu / fresh_batched_cpu, bare_cpu / reused_batched_cpu),
        );
    }

    // Python and JavaScript no-op (fewer records: a fresh Python instance takes ~1.5 ms).
    let few = n.min(3000);
    let rust_few = if wanted("languages") { lost.rate(noop(&[&host], &probe, &one, false, few).await) } else { 0.0 };
    for (language, fixture) in [("Python", "python-probe.wasm"), ("JavaScript", "js-probe.wasm")].into_iter().filter(|_| wanted("languages")) {
        let component = read("RUNNEL_BENCH_FIXTURES_DIR", fixture);
        let fresh = lost.rate(noop(&[&host], &component, &one, false, few).await);
        let reused = lost.rate(noop(&[&host], &component, &one, true, few).await);
        let fresh_batched = lost.rate(noop_batched(&[&host], &component, &one, false, bench_batch(), few).await);
        eprintln!("{language} no-op: fresh {fresh:.0}/s, reused {reused:.0}/s, fresh per batch {fresh_batched:.0}/s (Rust probe fresh {rust_few:.0}/s)");
        table.row(format!("{language} no-op, 1 partition, fresh / reused"), format!("{} / {}", per_s(fresh), per_s(reused)), format!("the Rust probe, fresh: {}", per_s(rust_few)), format!("{:.2} / {:.2}", fresh / rust_few, reused / rust_few));
        table.row(format!("{language} no-op, 1 partition, fresh instance per batch (max-batch {})", bench_batch()), per_s(fresh_batched), format!("the Rust probe, fresh: {}", per_s(rust_few)), format!("{:.2}", fresh_batched / rust_few));
    }

    // Two hosts in one group on the 4-partition topic, against one host
    // (the second host is started for each of its runs, from the cache).
    if wanted("hosts") {
        let (mut one_host, mut two_hosts, mut rebalances) = (Vec::new(), Vec::new(), 0);
        for _ in 0..rounds {
            one_host.push(lost.rate(noop(&[&host], &noop_fn, &four, false, n).await));
            let (second, _) = BenchHost::start(&database, &host_vars).await;
            let two = noop(&[&host, &second], &noop_fn, &four, false, n).await;
            two_hosts.push(two.rate);
            rebalances += two.revocations;
            drop(second);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (one_host, two_hosts) = (median(&mut one_host), median(&mut two_hosts));
        table.row(format!("no-op, 4 partitions, two hosts in one group (fresh); revocations in {rounds} runs: {rebalances}"), per_s(two_hosts), format!("one host: {}", per_s(one_host)), format!("{:.2}", two_hosts / one_host));
    }

    // person-to-comicbook: the shipped function against native consumers on copies of the same data.
    if wanted("p2c") {
        let persons = 200;
        let books = comicbooks(persons, 400);
        let events = 600usize;
        let component = read("RUNNEL_BENCH_FUNCTIONS_DIR", "person-to-comicbook.wasm");
        let manifest = String::from_utf8(read("RUNNEL_BENCH_FUNCTIONS_DIR", "person-to-comicbook.toml")).unwrap();
        let (mut runnel, mut native, mut eight, mut eight_indexed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The host indexes its database's comicbooks at start; the native
        // consumer's copy gets the same indexes, and a third copy has none,
        // as the database was before the host made them.
        let native_db = mongo.database(&format!("{database}_native"));
        let unindexed_db = mongo.database(&format!("{database}_unindexed"));
        let indexes = ROLES.iter().map(|role| mongodb::IndexModel::builder().keys(doc! { format!("persons.{role}._id"): 1 }).build());
        native_db.collection::<Document>("comicbooks").create_indexes(indexes).await.unwrap();
        for _ in 0..rounds {
            // A topic of its own each round: records seen before at the same
            // coordinates would be answered from the journal.
            let topic = unique("bench-person");
            create_topic(&topic, 3).await;
            fill(&topic, (0..events).map(|i| person_event(i, persons))).await;
            for db in [mongo.database(&database), native_db.clone(), unindexed_db.clone()] {
                let c = db.collection::<Document>("comicbooks");
                c.delete_many(doc! { "_id": { "$regex": "^book-" } }).await.unwrap();
                c.insert_many(books.clone()).await.unwrap();
            }
            let group = unique("p2c");
            let manifest = manifest.replace("topic = \"person\"", &format!("topic = \"{topic}\"")).replace("group = \"person-to-comicbook\"", &format!("group = \"{group}\""));
            // A version of its own: the seeded one keeps reading `person`.
            host.deploy("person-to-comicbook", &manifest, &component).await;
            let before = host.counters("person-to-comicbook").await.unwrap_or_default();
            runnel.push(lost.rate(rate_until_handled(&[&host], "person-to-comicbook", before, events as u64).await));
            native.push(native_p2c(&topic, events as u64, &native_db, P2cShape::OneRequest, P2C_IN_FLIGHT).await);
            eight.push(native_p2c(&topic, events as u64, &unindexed_db, P2cShape::EightRequests, 1).await);
            eight_indexed.push(native_p2c(&topic, events as u64, &native_db, P2cShape::EightRequests, 1).await);
            eprintln!(
                "person-to-comicbook: {:.0}/s, native {:.0}/s, native 8 updates unindexed {:.0}/s, indexed {:.0}/s",
                runnel.last().unwrap(),
                native.last().unwrap(),
                eight.last().unwrap(),
                eight_indexed.last().unwrap()
            );
        }
        // Back to the seeded version for the latency rows.
        let seeded = std::fs::read_to_string(std::path::Path::new(&functions_dir).join("person-to-comicbook.toml")).unwrap();
        host.deploy("person-to-comicbook", &seeded, &component).await;
        let (runnel, native, eight, eight_indexed) = (median(&mut runnel), median(&mut native), median(&mut eight), median(&mut eight_indexed));
        table.row(format!("person-to-comicbook, {events} events, 3 partitions, max-in-flight {P2C_IN_FLIGHT}"), per_s(runnel), format!("native consumer, same updates and concurrency: {}", per_s(native)), format!("**{:.2}**", runnel / native));
        table.row("person-to-comicbook against its old shape", per_s(runnel), format!("native, 8 sequential `update_many` per event, one event at a time, no indexes (the old function's work on the old database): {}", per_s(eight)), format!("**{:.1}×**", runnel / eight));
        table.row("person-to-comicbook against its old shape, indexed", per_s(runnel), format!("the same on the indexed copy: {}", per_s(eight_indexed)), format!("{:.1}×", runnel / eight_indexed));
    }

    // GET /api/stores/{id}, 16 clients, against the driver's find_one.
    if wanted("get") {
        let mut ids = Vec::new();
        for i in 0..50 {
            let r = host.client.post(host.url("/api/stores")).json(&json!({ "name": format!("Get {i}"), "address": "1 Main Street", "status": "OPEN" })).send().await.unwrap();
            ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
        }
        let urls: Vec<String> = ids.iter().map(|id| host.url(&format!("/api/stores/{id}"))).collect();
        let stores = mongo.database(&database).collection::<Document>("stores");
        let (mut api, mut driver) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            api.push(http_gets(&host.client, &urls, 2000).await);
            driver.push(driver_finds(&stores, &ids, 2000).await);
        }
        let (api, driver) = (median(&mut api), median(&mut driver));
        table.row("GET /api/stores/{id}, 16 concurrent", per_s(api), format!("driver `find_one`, 16 concurrent: {}", per_s(driver)), format!("{:.2}", api / driver));
    }

    // PUT → effect, both flows.
    if wanted("latency") {
        let mail = store_put_to_mail(&host, 30).await;
        table.row("PUT /api/stores/{id} → alert mail, p50 / p99 (30)", format!("{} / {}", micros(percentile(&mail, 0.5)), micros(percentile(&mail, 0.99))), "", "");
        let renamed = person_put_to_comicbook(&host, &mongo.database(&database), 30).await;
        table.row("PUT /api/persons/{id} → comicbook renamed, p50 / p99 (30)", format!("{} / {}", micros(percentile(&renamed, 0.5)), micros(percentile(&renamed, 0.99))), "", "");
    }

    if let Some(rss_after) = rss_after {
        table.row(format!("RSS idle / after {n} no-op records"), format!("{rss_idle:.0} MiB / {rss_after:.0} MiB"), "", "");
    }
    if !warm.is_empty() {
        table.row("start → ready, both functions from the compiled cache (median of 3)", micros(percentile(&warm, 0.5)), format!("first start, compiling: {}", micros(cold)), "");
    }
    table.row("partitions lost in the middle of a one-host run", format!("{} in {} runs", lost.revocations, lost.runs), "", "");

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\n{} cores, load {} before the table; {n} no-op records per run; medians of {rounds} interleaved runs\n", std::thread::available_parallelism().map_or(0, |n| n.get()), load.split(' ').take(3).collect::<Vec<_>>().join(" "));
    table.print();
    let _ = std::fs::remove_dir_all(compiled);
    let _ = mongo.database(&database).drop().await;
    let _ = mongo.database(&format!("{database}_native")).drop().await;
}
