//! Delivery: a record's effects happen once however often it is delivered,
//! and a record being retried holds back only its own partition.
//!
//! Runs against the servers `scripts/test` starts.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Host, Servers, eventually, mails_with_subject, produce};

const LIST: &str = "ops@example.com";

fn alerts_manifest(name: &str, topic: &str, group: &str) -> String {
    format!(
        "name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{group}'\n\
         [capabilities.documents]\nwrite = ['store_alerts']\n[capabilities.mail]\nenabled = true\n\
         [capabilities.config.distribution-list]\nvalue = '{LIST}'\n"
    )
}

fn alert_event(store: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "storeName": store, "storeStatus": "CLOSED" })).unwrap()
}

/// The servers, a host, a run id, and a new topic `<prefix>-<run id>` with
/// `partitions` partitions.
async fn start(prefix: &str, partitions: i32) -> (Servers, Host, String, String) {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("{prefix}-{run}");
    support::create_topic(&servers.kafka_brokers, &topic, partitions).await;
    (servers, host, run, topic)
}

async fn deploy(host: &Host, name: &str, manifest: &str, component: &[u8]) {
    let (status, body) = host.deploy(name, manifest, component).await;
    assert!(status.is_success(), "deploy {name}: {status} {body}");
}

/// Waits until `name`'s counter `counter` is at least `n`.
async fn counter_reaches(host: &Host, name: &str, counter: &str, n: u64, limit: Duration) -> Value {
    eventually(limit, &format!("{name}: {counter} >= {n}"), || async {
        let counters = host.counters(name).await;
        (counters[counter].as_u64().unwrap_or(0) >= n).then_some(counters)
    })
    .await
}

fn is_call_message_id(id: &str) -> bool {
    let inner = id.trim_start_matches('<').trim_end_matches('>');
    let Some((hex, domain)) = inner.split_once(".runnel@") else { return false };
    hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) && domain == "example.com"
}

/// Every record handled once, then all of them delivered again (the same
/// function in a new group starts from the beginning): the journal answers
/// every call, so no second alert and no second mail; every mail's
/// Message-ID is derived from its record and call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_delivered_again_has_its_effects_once() {
    let (servers, host, run, topic) = start("alerts-again", 1).await;
    let component = support::function("store-alert-to-email");
    let name = "alerts-again";
    deploy(&host, name, &alerts_manifest(name, &topic, "first"), &component).await;

    let stores: Vec<String> = (0..10).map(|i| format!("Again {run} {i}")).collect();
    let producer = support::producer(&servers.kafka_brokers);
    for store in &stores {
        support::send(&producer, &topic, None, store, &alert_event(store), &[]).await;
    }
    counter_reaches(&host, name, "handled", 10, Duration::from_secs(60)).await;

    // The same records again, from the start of the topic.
    deploy(&host, name, &alerts_manifest(name, &topic, "second"), &component).await;
    counter_reaches(&host, name, "replayed", 10, Duration::from_secs(60)).await;
    // A record counts as replayed once its calls were answered, and as
    // handled a moment later, when its try ends.
    counter_reaches(&host, name, "handled", 20, Duration::from_secs(60)).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts = support::documents(&servers.mongodb_uri, &host.database, "store_alerts").await;
    assert_eq!(alerts.len(), 10, "one alert per record: {alerts:?}");
    let mut ids = Vec::new();
    for store in &stores {
        let mails = mails_with_subject(&servers.maildir, &format!("Store Alert: {store}"));
        assert_eq!(mails.len(), 1, "one mail for {store}: {mails:?}");
        assert!(is_call_message_id(&mails[0].message_id), "{}", mails[0].message_id);
        ids.push(mails[0].message_id.clone());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "Message-IDs differ between records");
    let counters = host.counters(name).await;
    assert_eq!(counters["deadLettered"], 0, "{counters}");
}

/// The same event published twice (same `runnel-event-id`, two offsets) is
/// one record to the journal: one alert, one mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_event_has_its_effects_once() {
    let (servers, host, run, topic) = start("alerts-twice", 1).await;
    let name = "alerts-twice";
    deploy(&host, name, &alerts_manifest(name, &topic, name), &support::function("store-alert-to-email")).await;

    let store = format!("Twice {run}");
    let event_id = uuid::Uuid::new_v4().to_string();
    let producer = support::producer(&servers.kafka_brokers);
    for _ in 0..2 {
        support::send(&producer, &topic, None, &store, &alert_event(&store), &[("runnel-event-id", &event_id)]).await;
    }
    // A different event of the same store is not a duplicate.
    support::send(&producer, &topic, None, &store, &alert_event(&store), &[("runnel-event-id", "another")]).await;
    let counters = counter_reaches(&host, name, "handled", 3, Duration::from_secs(60)).await;
    assert_eq!(counters["replayed"], 1, "{counters}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mails_with_subject(&servers.maildir, &format!("Store Alert: {store}")).len(), 2);
    let alerts = support::documents(&servers.mongodb_uri, &host.database, "store_alerts").await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
}

/// With `max-in-flight`, records of other keys pass a record being
/// retried, the records of its key wait for it (in order), and the offset
/// committed stays before it until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_keys_pass_a_retried_record_and_its_own_key_waits() {
    let (servers, host, run, topic) = start("in-flight", 1).await;
    let name = "in-flight";
    let group = format!("in-flight-{run}");
    let manifest = format!(
        "name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{group}'\nmax-in-flight = 4\n\
         [trigger.kafka.retry]\nattempts = 1000\nbackoff = '50ms'\nmax-backoff = '200ms'\n"
    );
    deploy(&host, name, &manifest, &support::fixture("probe")).await;
    counter_reaches(&host, name, "assignments", 1, Duration::from_secs(60)).await;

    // Long enough for the records to be produced and counted, and the
    // committed offset read, on a loaded machine.
    let hold = Duration::from_secs(30);
    let until = chrono::Utc::now().timestamp_millis() + hold.as_millis() as i64;
    let started = Instant::now();
    let producer = support::producer(&servers.kafka_brokers);
    support::send(&producer, &topic, Some(0), "slow", format!("retry-until:{until}").as_bytes(), &[]).await;
    support::send(&producer, &topic, Some(0), "slow", b"ok", &[]).await;
    for i in 0..5 {
        support::send(&producer, &topic, Some(0), &format!("fast-{i}"), b"ok", &[]).await;
    }
    // The five other keys are handled while offset 0 is retried; offset 1
    // (its key) is not, and nothing is committed past offset 0.
    counter_reaches(&host, name, "handled", 5, hold).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counters = host.counters(name).await;
    let committed = support::committed_offset(&servers.kafka_brokers, &group, &topic, 0).await;
    assert!(started.elapsed() < hold, "checked too late to tell: {:?}", started.elapsed());
    assert_eq!(counters["handled"], 5, "the slow key's second record waited: {counters}");
    assert!(counters["retried"].as_u64().unwrap() >= 1, "{counters}");
    assert!(committed.is_none_or(|o| o == 0), "committed past the unfinished record: {committed:?}");

    // Once the first record is done, its key's next one runs, and all seven are committed.
    counter_reaches(&host, name, "handled", 7, hold + Duration::from_secs(30)).await;
    eventually(Duration::from_secs(30), "offset 7 committed", || async {
        (support::committed_offset(&servers.kafka_brokers, &group, &topic, 0).await == Some(7)).then_some(())
    })
    .await;
    assert_eq!(host.counters(name).await["deadLettered"], 0);
}

/// A record answered `retry-later` for a long time (6 minutes unless
/// `RUNNEL_TEST_RETRY_SECS` says otherwise; more than the consumer's
/// `max.poll.interval.ms` of 5 minutes) holds back its own partition only:
/// the other partition's records are handled meanwhile, the consumer keeps
/// its group membership (no rebalance), and the record is handled once the
/// function accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_keeps_the_group_and_other_partitions_flowing() {
    let secs: u64 = std::env::var("RUNNEL_TEST_RETRY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(360);
    let (servers, host, _, topic) = start("retrying", 2).await;
    let name = "retrying";
    let manifest = format!(
        "name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\n\
         [trigger.kafka.retry]\nattempts = 100000\nwithin = '2h'\nmax-backoff = '2s'\n"
    );
    deploy(&host, name, &manifest, &support::fixture("probe")).await;

    let started = Instant::now();
    let until = chrono::Utc::now().timestamp_millis() + (secs * 1000) as i64;
    let producer = support::producer(&servers.kafka_brokers);
    support::send(&producer, &topic, Some(0), "slow", format!("retry-until:{until}").as_bytes(), &[]).await;
    for _ in 0..5 {
        support::send(&producer, &topic, Some(1), "fast", b"ok", &[]).await;
    }
    counter_reaches(&host, name, "handled", 5, Duration::from_secs(60)).await;
    // Past the consumer's poll interval, the other partition still flows.
    tokio::time::sleep(Duration::from_secs(secs * 5 / 6).saturating_sub(started.elapsed())).await;
    for _ in 0..5 {
        support::send(&producer, &topic, Some(1), "fast", b"ok", &[]).await;
    }
    let counters = counter_reaches(&host, name, "handled", 10, Duration::from_secs(30)).await;
    assert!(started.elapsed() < Duration::from_secs(secs), "took too long to show anything: {counters}");
    // Every record of the other partition is handled, and the slow one not
    // yet (the partition's records as the broker holds them, so that a
    // record stored twice would not pass for the slow one).
    let records = support::read_topic(&servers.kafka_brokers, &topic, Duration::from_secs(30), |r| r.len() >= 11).await;
    let fast = records.iter().filter(|r| r.partition == 1).count();
    assert_eq!((fast, records.len() - fast), (10, 1), "the records produced, by partition");
    assert_eq!(counters["handled"], 10, "the slow record is not handled before its time: {counters}");

    let counters = counter_reaches(&host, name, "handled", 11, Duration::from_secs(secs + 60)).await;
    println!("retried for {:?}: {counters}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(secs));
    assert!(counters["retried"].as_u64().unwrap() > 10, "{counters}");
    assert_eq!(counters["assignments"], 1, "no rebalance: {counters}");
    assert_eq!(counters["revocations"], 0, "no rebalance: {counters}");
    assert_eq!(counters["deadLettered"], 0, "{counters}");
    let function = host.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(function["state"], "running", "{function}");
}

/// What the journal costs per capability call, next to the cost of the
/// effect it guards (a plain insert into the same database), measured
/// interleaved in one run: the first journaled call of a record reads the
/// record's journal and writes its entry, a later call only writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_cost_per_call() {
    use runnel::platform::journal::{Journal, RecordKey};
    let servers = Servers::from_env();
    let client = mongodb::Client::with_uri_str(&servers.mongodb_uri).await.unwrap();
    let database = client.database(&format!("journal_cost_{}", uuid::Uuid::new_v4().simple()));
    let journal = Journal::open(&database, Duration::from_secs(30)).await.unwrap();
    let plain = database.collection::<mongodb::bson::Document>("plain");
    let function: std::sync::Arc<str> = std::sync::Arc::from("cost");
    let keep = |_: &u32| true;
    let (mut first, mut later, mut insert) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..400i64 {
        let calls = journal.calls(function.clone(), RecordKey::new("cost", 0, i, None), false, None);
        let t = Instant::now();
        calls.run("test.first", true, &i, keep, |_| async { 1u32 }).await.unwrap();
        first.push(t.elapsed());
        let t = Instant::now();
        calls.run("test.later", true, &i, keep, |_| async { 2u32 }).await.unwrap();
        later.push(t.elapsed());
        let t = Instant::now();
        plain.insert_one(mongodb::bson::doc! { "i": i }).await.unwrap();
        insert.push(t.elapsed());
    }
    // A record handled again: both answered from the journal.
    let again = journal.calls(function.clone(), RecordKey::new("cost", 0, 7, None), false, None);
    assert_eq!(again.run("test.first", true, &7i64, keep, |_| async { 99u32 }).await.unwrap(), 1);
    assert_eq!(again.run("test.later", true, &7i64, keep, |_| async { 99u32 }).await.unwrap(), 2);
    assert_eq!(again.stats().await.replayed, 2);

    for v in [&mut first, &mut later, &mut insert] {
        v.sort();
    }
    let us = |v: &[Duration], p: f64| support::percentile(v, p).as_micros();
    println!(
        "journal cost per call over 400 records: first call of a record (read + write) p50 {} µs, p99 {} µs; \
         later call (write) p50 {} µs, p99 {} µs; a plain insert into the same database p50 {} µs, p99 {} µs",
        us(&first, 50.0), us(&first, 99.0), us(&later, 50.0), us(&later, 99.0), us(&insert, 50.0), us(&insert, 99.0)
    );
    let ratio = support::percentile(&later, 50.0).as_secs_f64() / support::percentile(&insert, 50.0).as_secs_f64();
    println!("journal write / plain insert (p50): {ratio:.2}");
    assert!(ratio < 4.0, "a journal write costs {ratio:.1} plain inserts");
}

/// A function's manifest with nothing but its name and topic: every
/// setting at its default.
fn plain_manifest(name: &str, topic: &str) -> String {
    format!("name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\n")
}

/// Runs the `runnel` command against `host`; its exit code and output.
fn runnel(host: &Host, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env("RUNNEL_URL", &host.base)
        .env_remove("RUNNEL_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// A record dead-lettered by a broken version, replayed from the DLQ once
/// the function is fixed, is handled once: one alert, one mail. Replaying
/// the DLQ again skips it; re-running the topic from offset 0 is answered
/// from the journal; neither mails again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_the_fix_is_handled_once() {
    let (servers, host, run, topic) = start("replay", 1).await;
    let name = "replayed";
    // The broken version: the probe fixture refuses a store event as bad input.
    let broken = plain_manifest(name, &topic);
    deploy(&host, name, &broken, &support::fixture("probe")).await;
    let store = format!("Replayed {run}");
    produce(&servers.kafka_brokers, &topic, None, &store, &alert_event(&store), &[]).await;
    counter_reaches(&host, name, "deadLettered", 1, Duration::from_secs(60)).await;
    let (code, out) = runnel(&host, &["replay", name, "--from-time", "not-a-time"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = runnel(&host, &["replay", name]);
    assert_eq!(code, 2, "a source is required: {out}");

    // The fix: the real function, same name, topic and group.
    deploy(&host, name, &alerts_manifest(name, &topic, name), &support::function("store-alert-to-email")).await;
    let (code, out) = runnel(&host, &["replay", name, "--dlq"]);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 1 record(s)") && out.contains("ok 1"), "{out}");
    let subject = format!("Store Alert: {store}");
    assert_eq!(mails_with_subject(&servers.maildir, &subject).len(), 1);

    let (code, out) = runnel(&host, &["replay", name, "--dlq", "--since", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 0 record(s)") && out.contains("1 dead letter(s) skipped"), "{out}");
    let (code, out) = runnel(&host, &["replay", name, "--from-offset", "0"]);
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 1 record(s)") && out.contains("answered from the journal"), "{out}");

    // Undeployed, its group's offsets are moved instead; deployed again, it
    // runs the record again, answered from the journal.
    let (status, _) = host.send(reqwest::Method::DELETE, &format!("/admin/functions/{name}"), None).await;
    assert!(status.is_success());
    let (code, out) = runnel(&host, &["replay", name, "--dlq"]);
    assert_eq!(code, 1, "dead letters need a running version: {out}");
    let (code, out) = runnel(&host, &["replay", name, "--from-offset", "0"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("partition 0 at offset 0"), "{out}");
    deploy(&host, name, &alerts_manifest(name, &topic, name), &support::function("store-alert-to-email")).await;
    // A record's replayed is counted before its handled.
    let counters = counter_reaches(&host, name, "handled", 1, Duration::from_secs(60)).await;
    assert_eq!(counters["replayed"], 1, "{counters}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mails_with_subject(&servers.maildir, &subject).len(), 1, "mailed once in all");
    let alerts = support::documents(&servers.mongodb_uri, &host.database, "store_alerts").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (status, _) = host
        .client
        .post(host.url("/admin/functions/no-such/replay"))
        .json(&json!({ "from": "dead-letters" }))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
}

/// SIGTERM while a call is in flight: the host stops fetching, finishes the
/// call, commits it and leaves the group, and exits 0 within the bound; the
/// next host goes on after that record (it is not run again), with the
/// records that were fetched but not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_call_in_flight_and_commits_it() {
    let (servers, host, _, topic) = start("sigterm", 1).await;
    let name = "sigterm";
    let manifest = plain_manifest(name, &topic);
    deploy(&host, name, &manifest, &support::fixture("probe")).await;
    produce(&servers.kafka_brokers, &topic, None, "warm", b"ok", &[]).await;
    counter_reaches(&host, name, "handled", 1, Duration::from_secs(60)).await;

    // A call of a second or more, then three quick records behind it, all
    // sent by one producer: with one producer per record, sending them took
    // about as long as the call, which had then ended before the wait below
    // began (the test waited for it in vain).
    let producer = support::producer(&servers.kafka_brokers);
    support::send(&producer, &topic, None, "slow", b"spin:4000", &[]).await;
    for _ in 0..3 {
        support::send(&producer, &topic, None, "after", b"ok", &[]).await;
    }
    let produced = Instant::now();
    // SIGTERM once the slow call runs: one record handled, an instance alive
    // (each record gets a fresh one, so only a call in flight holds one).
    // What was seen, printed as it changes: on a time-out, whether the slow
    // record never started or its call was missed.
    let seen = std::sync::Mutex::new(String::new());
    eventually(Duration::from_secs(60), "the slow call in flight", || async {
        let metrics = host.client.get(host.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let alive: f64 = metrics.lines().find_map(|l| l.strip_prefix("runnel_wasm_instances "))?.trim().parse().ok()?;
        let lag: Vec<&str> = metrics.lines().filter(|l| l.starts_with("runnel_consumer_lag{")).collect();
        let counters = host.counters(name).await;
        let now = format!("instances {alive}, lag {lag:?}, counters {counters}");
        let mut seen = seen.lock().unwrap();
        if *seen != now {
            println!("{:?} after the records: {now}", produced.elapsed());
            *seen = now;
        }
        (counters["handled"].as_u64()? == 1 && alive >= 1.0).then_some(())
    })
    .await;
    let database = host.database.clone();
    let (status, took) = host.terminate().await;
    println!("SIGTERM with a call in flight: exited with {status} after {} ms", took.as_millis());
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(40), "the stop took {took:?}");

    let next = Host::start_on(&servers, &database, &[]).await;
    let counters = counter_reaches(&next, name, "handled", 3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters_later = next.counters(name).await;
    assert_eq!(counters_later["handled"], counters["handled"]);
    assert_eq!(counters_later["handled"], 3, "the call in flight finished and was committed: {counters_later}");
}

/// One record at a time, each produced at a different moment of the
/// worker's wait (right away, or after a pause of up to 40 ms), on a
/// long-lived producer: every one is handled. A record whose queue's
/// wake-up was missed would sit, the next one being produced only once it
/// is handled, until the worker's periodic look at its queue (within half a
/// second); without that look, for good, and the test would time out. How
/// many the look found is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handled_however_it_meets_the_wait() {
    let (servers, host, _, topic) = start("wakeups", 1).await;
    let name = "wakeups";
    let manifest = plain_manifest(name, &topic);
    deploy(&host, name, &manifest, &support::fixture("noop")).await;
    let producer = support::producer(&servers.kafka_brokers);
    // The first record waits for the assignment.
    support::send(&producer, &topic, None, "warm", b"ok", &[]).await;
    counter_reaches(&host, name, "handled", 1, Duration::from_secs(60)).await;
    let records = 300u64;
    let mut took = Vec::new();
    for i in 1..=records {
        tokio::time::sleep(Duration::from_millis((i * 7) % 41)).await;
        let sent = Instant::now();
        support::send(&producer, &topic, None, &i.to_string(), b"ok", &[]).await;
        counter_reaches(&host, name, "handled", i + 1, Duration::from_secs(30)).await;
        took.push(sent.elapsed());
    }
    took.sort();
    let at = |p: f64| support::percentile(&took, p).as_millis();
    let refetched = host.log_text().matches("no wake-up came").count();
    println!(
        "{records} records one at a time, produce to handled: p50 {} ms, p99 {} ms, max {} ms; {refetched} read only by the queue's periodic look",
        at(50.0),
        at(99.0),
        at(100.0)
    );
}
