//! `handle-batch` through the runtime, against the real database: several
//! records in one call of one instance, each record's capability calls
//! journaled as its own (so a record delivered again alone gets its own
//! earlier answers), and the first record not handled named with its error;
//! the same for Python and JavaScript functions.
//! Then through the Kafka trigger (`max-batch` in the manifest), on a real
//! broker: every record handled once, bad ones dead-lettered without holding
//! back the rest of their batch, offsets committed, a second delivery of
//! everything answered from the journals; a record retried inside a batch
//! holding back the later records of its own key only; each record's mail
//! and log line carrying its own trace; and a component without
//! `handle-batch` refused a `max-batch`.

mod support;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use runnel::platform::{
    capabilities::{ManifestGrants, Services, mail::Mail},
    journal::{Journal, RecordKey},
    runtime::{Limits, Message, Outcome, Runtime},
};
use reqwest::StatusCode;
use support::{Host, Servers, committed_offset, create_topic, documents, fixture, recorder_manifest};

const FUNCTION: &str = "recorder-batch";

fn message(offset: i64, payload: &str) -> Message {
    let mut message = Message::with_payload("batch-topic", payload);
    message.offset = offset;
    message.key = Some(format!("k{offset}").into_bytes());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_journals_each_record_as_its_own_and_names_the_first_it_did_not_handle() {
    let servers = Servers::from_env();
    let database_name = format!("batch-{}", uuid::Uuid::new_v4().simple());
    let collection = "recorded";
    let client = mongodb::Client::with_uri_str(&servers.mongodb_uri).await.unwrap();
    let database = client.database(&database_name);
    let mail = Mail::new(&servers.smtp_url, "runnel@example.com").unwrap();
    let runtime = Runtime::new(Services::new(database.clone(), mail, Duration::from_secs(5)), Limits::default(), None).unwrap();
    let journal = Journal::open(&database, Duration::from_secs(5)).await.unwrap();
    let grants: ManifestGrants = toml::from_str(&format!(
        "[documents]\nwrite = ['{collection}']\n[config.collection]\nvalue = '{collection}'\n"
    ))
    .unwrap();
    let grants = runtime.services().resolve(FUNCTION, &grants, &|_| None).unwrap();
    let recorder = runtime.load(FUNCTION, &support::fixture("recorder"), grants).await.unwrap();
    assert!(recorder.batches(), "a function built with the Rust SDK exports handle-batch");

    let name: Arc<str> = Arc::from(FUNCTION);
    let key = |m: &Message| RecordKey::new(m.topic.as_str(), m.partition, m.offset, None);
    let calls_of = |m: &Message| journal.calls(name.clone(), key(m), false, None);

    // Records 0..3 handled, 3 refused, 4 never reached.
    let batch: Vec<Message> =
        vec![message(0, "a"), message(1, "b"), message(2, "c"), message(3, "recorder:bad-input"), message(4, "e")];
    let calls: Vec<_> = batch.iter().map(calls_of).collect();
    let answer = recorder.run_batch(&batch, &calls).await;
    assert_eq!(answer.handled, 3, "{answer:?}");
    assert!(matches!(&answer.outcome, Outcome::Declined(runnel::platform::runtime::HandlerError::BadInput(r)) if r == "recorder:bad-input"), "{answer:?}");
    for (i, c) in calls.iter().enumerate() {
        let stats = c.stats().await;
        assert_eq!(stats.journaled, u32::from(i < 3), "record {i}: its own insert, journaled under it: {stats:?}");
        assert_eq!(stats.replayed, 0);
    }
    let documents = support::documents(&servers.mongodb_uri, &database_name, collection).await;
    let mut offsets: Vec<i64> = documents.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2]);

    // Each record delivered again alone: those handled get their insert
    // answered from their own journal (no second document); record 4,
    // never reached, is inserted now.
    for (i, m) in batch.iter().enumerate().filter(|(i, _)| *i != 3) {
        let calls = calls_of(m);
        let outcome = recorder.run(m, &calls).await.outcome;
        assert!(matches!(outcome, Outcome::Handled), "record {i}: {outcome:?}");
        let stats = calls.stats().await;
        let expected = if i < 3 { (1, 0) } else { (0, 1) };
        assert_eq!((stats.replayed, stats.journaled), expected, "record {i}: {stats:?}");
    }
    let documents = support::documents(&servers.mongodb_uri, &database_name, collection).await;
    let mut offsets: Vec<i64> = documents.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2, 4], "every record recorded once");

    // The same batch again, in another composition: answered from the
    // journals, nothing written twice.
    let again: Vec<Message> = vec![message(2, "c"), message(4, "e"), message(0, "a")];
    let calls: Vec<_> = again.iter().map(calls_of).collect();
    let answer = recorder.run_batch(&again, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 3, "{answer:?}");
    for c in &calls {
        assert_eq!(c.stats().await.replayed, 1);
    }
    assert_eq!(support::documents(&servers.mongodb_uri, &database_name, collection).await.len(), 4);

    // A reused instance takes batches too, and counts their records.
    let reused = recorder.clone().reusing(4, Duration::from_secs(60));
    let more: Vec<Message> = (10..13).map(|o| message(o, "x")).collect();
    let calls: Vec<_> = more.iter().map(calls_of).collect();
    let answer = reused.run_batch(&more, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 3, "{answer:?}");
    assert_eq!(runtime.usage().0, 1, "the instance that handled 3 of its 4 is kept");
    let calls: Vec<_> = more.iter().map(calls_of).collect();
    let answer = reused.run_batch(&more, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled), "{answer:?}");
    assert_eq!(runtime.usage().0, 0, "past max-messages it is dropped");

    // A batch and its journals that do not match, and an empty batch.
    let answer = recorder.run_batch(&batch, &[]).await;
    assert!(matches!(answer.outcome, Outcome::Failed(_)) && answer.handled == 0, "{answer:?}");
    let answer = recorder.run_batch(&[], &[]).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 0, "{answer:?}");
    database.drop().await.unwrap();
}

/// The Python and JavaScript SDKs build for the batch world too: a batch
/// whose third record is bad input answers 2 handled and the error, each
/// handled record's insert journaled under that record (so it is answered
/// from the journal when the record comes again alone), the rest never
/// reached; a bug in the function traps the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_functions_take_batches_each_record_journaled_as_its_own() {
    let servers = Servers::from_env();
    let database_name = format!("batch-languages-{}", uuid::Uuid::new_v4().simple());
    let client = mongodb::Client::with_uri_str(&servers.mongodb_uri).await.unwrap();
    let database = client.database(&database_name);
    let mail = Mail::new(&servers.smtp_url, "runnel@example.com").unwrap();
    let compiled = std::env::var("RUNNEL_COMPILED_DIR").ok().map(std::path::PathBuf::from);
    let runtime = Runtime::new(Services::new(database.clone(), mail, Duration::from_secs(5)), Limits::default(), compiled).unwrap();
    let journal = Journal::open(&database, Duration::from_secs(5)).await.unwrap();
    for language in ["python", "js"] {
        let (name, collection) = (format!("{language}-batch"), format!("{language}_recorded"));
        let grants: ManifestGrants = toml::from_str(&format!("[documents]\nwrite = ['{collection}']\n")).unwrap();
        let grants = runtime.services().resolve(&name, &grants, &|_| None).unwrap();
        let function = runtime.load(&name, &fixture(&format!("{language}-probe")), grants).await.unwrap();
        assert!(function.batches(), "{language}: the SDK exports handle-batch");

        let function_name: Arc<str> = Arc::from(name.as_str());
        let calls_of = |m: &Message| journal.calls(function_name.clone(), RecordKey::new(m.topic.as_str(), m.partition, m.offset, None), false, None);
        let insert = format!("insert:{collection}");
        let batch = vec![message(0, &insert), message(1, &insert), message(2, "bad-input"), message(3, &insert)];
        let calls: Vec<_> = batch.iter().map(calls_of).collect();
        let answer = function.run_batch(&batch, &calls).await;
        assert_eq!(answer.handled, 2, "{language}: {answer:?}");
        assert!(
            matches!(&answer.outcome, Outcome::Declined(runnel::platform::runtime::HandlerError::BadInput(r)) if r == "asked for bad-input"),
            "{language}: {answer:?}"
        );
        for (i, c) in calls.iter().enumerate() {
            assert_eq!(c.stats().await.journaled, u32::from(i < 2), "{language}, record {i}: its own insert, journaled under it");
        }
        let offsets = |docs: Vec<serde_json::Value>| {
            let mut offsets: Vec<i64> = docs.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
            offsets.sort_unstable();
            offsets
        };
        assert_eq!(offsets(documents(&servers.mongodb_uri, &database_name, &collection).await), [0, 1], "{language}");

        // Record 1 again, alone: its insert is answered from its journal.
        let calls = calls_of(&batch[1]);
        let outcome = function.run(&batch[1], &calls).await.outcome;
        assert!(matches!(outcome, Outcome::Handled), "{language}: {outcome:?}");
        assert_eq!(calls.stats().await.replayed, 1, "{language}");
        assert_eq!(offsets(documents(&servers.mongodb_uri, &database_name, &collection).await), [0, 1], "{language}: nothing written twice");

        // A bug traps the whole batch: nothing is counted as handled.
        let trapping = vec![message(10, "ok"), message(11, "trap"), message(12, "ok")];
        let calls: Vec<_> = trapping.iter().map(calls_of).collect();
        let answer = function.run_batch(&trapping, &calls).await;
        assert!(matches!(answer.outcome, Outcome::Failed(_)) && answer.handled == 0, "{language}: {answer:?}");
        let answer = function.run_batch(&trapping[..1], &calls[..1]).await;
        assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 1, "{language}: {answer:?}");
    }
    database.drop().await.unwrap();
}

const RECORDS: usize = 1_500;
const PARTITIONS: i32 = 3;

/// Polls the function until `done` says its counters are there (600 s at most).
async fn counters_when(host: &Host, name: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let function = host.get_json(&format!("/admin/functions/{name}")).await;
        let counters = function["running"]["counters"].clone();
        if done(&counters) {
            return counters;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "not done in 600 s: {function}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_hands_ready_records_to_handle_batch_and_loses_or_repeats_nothing() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (name, topic, collection) = (format!("batch-{id}"), format!("batch-{id}"), "records");
    create_topic(&servers.kafka_brokers, &topic, PARTITIONS).await;

    // A component of the one-record world is refused a batch, naming why.
    let batching = |manifest: String| manifest.replace("[trigger.kafka]\n", "[trigger.kafka]\nmax-batch = 50\nmax-in-flight = 2\n");
    let manifest = batching(recorder_manifest(&name, &topic, &format!("first-{id}"), collection, "A"));
    let (status, problem) = host.deploy(&name, &manifest, &fixture("one-record")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem.to_string().contains("max-batch = 50 needs a component that exports handle-batch"), "{problem}");

    // 1,500 records over 40 keys (so a batch holds several of one key), one
    // in 100 bad input; produced before the function starts, so that its
    // partitions' queues are full and batches are large.
    let producer = runnel::platform::kafka::EventProducer::new(
        &runnel::platform::kafka::Cluster::new(&servers.kafka_brokers, Vec::new()),
        Duration::from_secs(30),
        false,
    )
    .unwrap();
    let bad = |i: usize| i % 100 == 7;
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|&i| {
            let (key, payload) = (format!("k{}", i % 40), if bad(i) { "recorder:bad-input" } else { "{}" });
            let producer = &producer;
            let topic = &topic;
            async move {
                producer
                    .publish(runnel::platform::kafka::Event { topic, key: Some(key.as_bytes()), payload: payload.as_bytes().to_vec(), headers: vec![] })
                    .await
            }
        });
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
    }
    let bad_records = (0..RECORDS).filter(|&i| bad(i)).count() as u64;
    let good_records = RECORDS as u64 - bad_records;

    let (status, deployed) = host.deploy(&name, &manifest, &fixture("recorder")).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    let counters = counters_when(&host, &name, |c| c["handled"].as_u64().unwrap_or(0) + c["deadLettered"].as_u64().unwrap_or(0) >= RECORDS as u64).await;
    assert_eq!(counters["handled"], good_records, "{counters}");
    assert_eq!(counters["deadLettered"], bad_records, "{counters}");
    let batched = counters["batched"].as_u64().unwrap();
    println!("handled {good_records}, of them {batched} in calls of handle-batch; {bad_records} dead-lettered");
    // The first records of each partition start alone (nothing else is
    // ready yet); a record after a bad one goes on in a batch again.
    assert!(batched >= good_records * 3 / 4, "most records went through handle-batch: {counters}");

    let docs = documents(&servers.mongodb_uri, &host.database, collection).await;
    let mut seen: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for d in &docs {
        *seen.entry((d["partition"].as_i64().unwrap(), d["offset"].as_i64().unwrap())).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "handled more than once: {repeated:?}");
    assert_eq!(docs.len() as u64, good_records, "every good record handled once, no bad one recorded");

    // Everything handled is committed (in the background, within a second).
    let started = Instant::now();
    loop {
        let mut committed = 0;
        for partition in 0..PARTITIONS {
            committed += committed_offset(&servers.kafka_brokers, &format!("first-{id}"), &topic, partition).await.unwrap_or(0);
        }
        if committed == RECORDS as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "committed {committed} of {RECORDS}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every record delivered again (a new group): the journals answer, in
    // batches too, and nothing is recorded twice.
    let again = batching(recorder_manifest(&name, &topic, &format!("second-{id}"), collection, "A"));
    let (status, deployed) = host.deploy(&name, &again, &fixture("recorder")).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    let counters = counters_when(&host, &name, |c| {
        c["handled"].as_u64().unwrap_or(0) + c["deadLettered"].as_u64().unwrap_or(0) >= 2 * RECORDS as u64
    })
    .await;
    assert_eq!(counters["handled"], 2 * good_records, "{counters}");
    assert!(counters["replayed"].as_u64().unwrap() >= good_records, "every handled record answered from its journal: {counters}");
    let docs = documents(&servers.mongodb_uri, &host.database, collection).await;
    assert_eq!(docs.len() as u64, good_records, "nothing recorded twice");
}

/// A record the function declines inside a batch ends the batch there: it
/// is retried in a run of its own, holding its key, and the records after
/// it go on by their keys meanwhile; its key's next record waits for it,
/// and nothing past it is committed until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_retried_inside_a_batch_holds_back_only_its_own_key() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[("RUNNEL_LOG_FORMAT", "json")]).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (name, topic, group) = (format!("split-{id}"), format!("split-{id}"), format!("split-{id}"));
    create_topic(&servers.kafka_brokers, &topic, 1).await;
    let manifest = format!(
        "name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{group}'\nmax-batch = 20\nmax-in-flight = 2\n\
         [trigger.kafka.retry]\nattempts = 1000\nbackoff = '50ms'\nmax-backoff = '200ms'\n"
    );
    let (status, deployed) = host.deploy(&name, &manifest, &fixture("probe")).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    counters_when(&host, &name, |c| c["assignments"].as_u64().unwrap_or(0) >= 1).await;

    // Two records retried for 4 s take both slots, so that the seven after
    // them are ready together when a slot frees: one batch, led by a record
    // retried for 30 s, then its key's next record, then five of other keys.
    let brokers = &servers.kafka_brokers;
    let producer = runnel::platform::kafka::EventProducer::new(&runnel::platform::kafka::Cluster::new(brokers, Vec::new()), Duration::from_secs(30), false).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let (gate, slow) = (now + 4_000, now + 30_000);
    let mut records = vec![
        ("gate-a".to_string(), format!("retry-until:{gate}")),
        ("gate-b".to_string(), format!("retry-until:{gate}")),
        ("slow".to_string(), format!("retry-until:{slow}")),
        ("slow".to_string(), "ok".to_string()),
    ];
    records.extend((0..5).map(|i| (format!("fast-{i}"), "ok".to_string())));
    // One producer, one record after the other: in this order, within a few milliseconds.
    for (key, payload) in &records {
        let event = runnel::platform::kafka::Event { topic: &topic, key: Some(key.as_bytes()), payload: payload.as_bytes().to_vec(), headers: vec![] };
        producer.publish(event).await.unwrap();
    }
    assert!(chrono::Utc::now().timestamp_millis() < gate - 2_000, "producing took too long to tell");

    // While the slow record is retried: the gates and the five others are
    // handled, the five through handle-batch; the slow key's next record
    // waits, and nothing is committed past the slow record (offset 2).
    let deadline = slow - 5_000;
    let counters = loop {
        let counters = host.counters(&name).await;
        if counters["handled"].as_u64().unwrap_or(0) >= 7 || chrono::Utc::now().timestamp_millis() > deadline {
            break counters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(chrono::Utc::now().timestamp_millis() <= deadline, "the other keys waited for the retried record: {counters}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counters = host.counters(&name).await;
    let committed = committed_offset(brokers, &group, &topic, 0).await;
    assert!(chrono::Utc::now().timestamp_millis() < slow, "checked too late to tell: {counters}");
    assert_eq!(counters["handled"], 7, "the slow key's next record waited: {counters}");
    assert!(counters["batched"].as_u64().unwrap() >= 5, "the other keys went on in a batch: {counters}");
    assert!(counters["retried"].as_u64().unwrap() >= 1, "{counters}");
    assert!(committed.is_none_or(|o| o <= 2), "committed past the retried record: {committed:?}");

    // Once it is done, its key's next record runs, and all nine are committed.
    let counters = counters_when(&host, &name, |c| c["handled"].as_u64().unwrap_or(0) >= 9).await;
    assert_eq!(counters["handled"], 9, "{counters}");
    assert_eq!(counters["deadLettered"], 0, "{counters}");
    let started = Instant::now();
    while committed_offset(brokers, &group, &topic, 0).await != Some(9) {
        assert!(started.elapsed() < Duration::from_secs(30), "offset 9 not committed in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The slow record (no traceparent) kept the trace the batch gave it:
    // its "not yet" lines, in the batch and retried alone, name one trace.
    let not_yet = format!("not yet: {slow}");
    let traces: Vec<String> = host
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"].as_str().or(l["message"].as_str()) == Some(not_yet.as_str()))
        .map(|l| [&l["trace_id"], &l["fields"]["trace_id"], &l["span"]["trace_id"]].iter().find_map(|t| t.as_str()).unwrap_or("none").to_string())
        .collect();
    assert!(traces.len() >= 2, "the slow record's lines: {traces:?}");
    assert!(traces.iter().all(|t| t == &traces[0] && t != "none"), "the slow record changed trace: {traces:?}");
}

/// Each record of a batch keeps its own trace: the mail the function sends
/// for it carries its `traceparent`'s trace id, and so does its log line,
/// which names no other record's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_of_a_batch_keeps_its_own_trace() {
    use support::store_alert_flow::DISTRIBUTION_LIST;
    const STORES: usize = 40;
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST), ("RUNNEL_LOG_FORMAT", "json")]).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (name, topic, group) = (format!("traced-{id}"), format!("traced-{id}"), format!("traced-{id}"));
    create_topic(&servers.kafka_brokers, &topic, 1).await;

    // Produced before the function starts, so that they are ready together.
    let producer = runnel::platform::kafka::EventProducer::new(
        &runnel::platform::kafka::Cluster::new(&servers.kafka_brokers, Vec::new()),
        Duration::from_secs(30),
        false,
    )
    .unwrap();
    let stores: Vec<(String, String)> =
        (0..STORES).map(|i| (format!("Batched {id} {i}"), uuid::Uuid::new_v4().simple().to_string())).collect();
    for (i, (store, trace_id)) in stores.iter().enumerate() {
        let payload = serde_json::json!({ "storeName": store, "storeStatus": "CLOSED" }).to_string();
        let (key, traceparent) = (format!("store-{i}"), format!("00-{trace_id}-00f067aa0ba902b7-01"));
        let event = runnel::platform::kafka::Event {
            topic: &topic,
            key: Some(key.as_bytes()),
            payload: payload.into_bytes(),
            headers: vec![("traceparent", traceparent.into_bytes())],
        };
        producer.publish(event).await.unwrap();
    }

    let functions = &servers.functions_dir;
    let component = std::fs::read(functions.join("store-alert-to-email.wasm")).unwrap();
    let manifest = std::fs::read_to_string(functions.join("store-alert-to-email.toml"))
        .unwrap()
        .replace("name = \"store-alert-to-email\"", &format!("name = '{name}'"))
        .replace("topic = \"store-alerts-topic\"", &format!("topic = '{topic}'"))
        .replace("group = \"store-alerts\"", &format!("group = '{group}'"))
        .replace("max-in-flight = 8", "max-in-flight = 1\nmax-batch = 20");
    assert!(manifest.contains(&format!("group = '{group}'")) && manifest.contains("max-batch = 20"), "{manifest}");
    let (status, deployed) = host.deploy(&name, &manifest, &component).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    let counters = counters_when(&host, &name, |c| c["handled"].as_u64().unwrap_or(0) >= STORES as u64).await;
    assert_eq!(counters["handled"], STORES as u64, "{counters}");
    let batched = counters["batched"].as_u64().unwrap();
    println!("{STORES} records handled, {batched} of them in calls of handle-batch");
    assert!(batched >= STORES as u64 / 2, "most records went through handle-batch: {counters}");

    let lines: Vec<serde_json::Value> = host.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for (store, trace_id) in &stores {
        let mails = support::mails_with_subject(&servers.maildir, &format!("Store Alert: {store}"));
        assert!(!mails.is_empty(), "no mail for {store}");
        for mail in &mails {
            assert!(mail.traceparent.starts_with(&format!("00-{trace_id}-")), "{store}: mail Traceparent '{}', not trace {trace_id}", mail.traceparent);
        }
        let mailed = format!("for store '{store}' mailed");
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"].as_str().or(l["message"].as_str()).is_some_and(|m| m.ends_with(&mailed)))
            .unwrap_or_else(|| panic!("no log line for {store}"))
            .to_string();
        assert!(line.contains(trace_id.as_str()), "{store}: its log line names not its trace {trace_id}: {line}");
        let others: Vec<_> = stores.iter().filter(|(_, t)| t != trace_id && line.contains(t.as_str())).collect();
        assert!(others.is_empty(), "{store}: its log line names other records' traces {others:?}: {line}");
    }
}
