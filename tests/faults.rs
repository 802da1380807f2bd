//! Fault tests: the store-alerts flow on servers of the test's own, which it
//! hangs (SIGSTOP/SIGCONT), kills and restarts while records flow. Nothing
//! may be lost, doubled, or dead-lettered.
//!
//! `RUNNEL_FAULT_HANG_SECS` (a list, default `20,100`) sets how long each
//! service is hung.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Host, OwnServers, Servers, eventually, mails_starting, signal};

const SHIPPED_MANIFEST: &str = include_str!("../functions/store-alert-to-email/runnel.toml");

fn hang_secs() -> Vec<u64> {
    std::env::var("RUNNEL_FAULT_HANG_SECS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![20, 100])
}

/// A host running `store-alert-to-email` (as shipped) on `servers`.
async fn alerts_host(servers: &Servers, database: &str) -> Host {
    let host = Host::start_on(servers, database, &[("ALERT_DISTRIBUTION_LIST", "ops@example.com")]).await;
    let (status, body) =
        host.deploy("store-alert-to-email", SHIPPED_MANIFEST, &support::function("store-alert-to-email")).await;
    assert!(status.is_success(), "{status} {body}");
    host
}

async fn create_store(host: &Host, name: &str) -> String {
    let store = host.create("/api/stores", json!({ "name": name, "address": "1 Main Street" })).await;
    store["id"].as_str().unwrap().to_string()
}

/// Renames store `id` to `name` (each update is its own alert and subject).
async fn rename(host: &Host, id: &str, name: &str) -> StatusCode {
    let body = json!({ "name": name, "address": "1 Main Street", "status": "CLOSED" });
    host.send(Method::PUT, &format!("/api/stores/{id}"), Some(&body)).await.0
}

async fn alerts_starting(servers: &Servers, database: &str, prefix: &str) -> Vec<Value> {
    support::documents(&servers.mongodb_uri, database, "store_alerts")
        .await
        .into_iter()
        .filter(|a| a["storeName"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .collect()
}

/// Waits for exactly `names` to be alerted once each and mailed, and checks
/// that nothing more arrives. Returns how many mails were sent twice: each
/// must carry its twin's Message-ID (the same record and call: the one
/// window the journal cannot close, the server accepted the message and the
/// host died before journaling it), so that a receiver drops it.
async fn expect_each_once(servers: &Servers, database: &str, prefix: &str, names: &[String], limit: Duration) -> usize {
    eventually(limit, &format!("{} alerts and mails for {prefix}", names.len()), || async {
        // Distinct subjects: a mail sent twice does not stand for one still to come.
        let mails = mails_starting(&servers.maildir, &format!("Store Alert: {prefix}"));
        let subjects: std::collections::BTreeSet<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
        let alerts = alerts_starting(servers, database, prefix).await.len();
        (subjects.len() >= names.len() && alerts >= names.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = mails_starting(&servers.maildir, &format!("Store Alert: {prefix}"));
    let mut by_subject: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for mail in &mails {
        by_subject.entry(mail.subject.as_str()).or_default().push(mail.message_id.as_str());
    }
    let mut expected: Vec<String> = names.iter().map(|n| format!("Store Alert: {n}")).collect();
    expected.sort();
    assert_eq!(by_subject.keys().copied().collect::<Vec<_>>(), expected, "a mail for every update, and no other");
    let mut duplicates = 0;
    for (subject, ids) in &by_subject {
        assert!(ids.iter().all(|id| *id == ids[0]), "{subject} mailed twice with different Message-IDs: {ids:?}");
        duplicates += ids.len() - 1;
    }
    let alerts = alerts_starting(servers, database, prefix).await;
    let mut stored: Vec<&str> = alerts.iter().map(|a| a["storeName"].as_str().unwrap()).collect();
    stored.sort();
    let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(stored, expected, "one alert per update");
    duplicates
}

/// The SMTP server hung (20 s, 100 s) and killed-and-restarted, then the
/// database hung (20 s, 100 s), each while alerts flow: every alert is
/// stored and mailed once, nothing is dead-lettered, and the waits show as
/// waits for a service, not failures of the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_restarted_services_lose_and_double_nothing() {
    let mut own = OwnServers::start().await;
    let database = format!("faults_{}", uuid::Uuid::new_v4().simple());
    let host = alerts_host(&own.servers, &database).await;
    let store = create_store(&host, "Warm-up").await;
    assert_eq!(rename(&host, &store, "Warm-up 1").await, StatusCode::OK);
    expect_each_once(&own.servers, &database, "Warm-up 1", &["Warm-up 1".into()], Duration::from_secs(60)).await;

    let smtp_pid = own.smtp.id().unwrap();
    for secs in hang_secs() {
        // Updates while the SMTP server hangs: saved, alerted, mailed later.
        let prefix = format!("Smtp-hung-{secs}s ");
        let names: Vec<String> = (0..10).map(|i| format!("{prefix}{i}")).collect();
        signal(smtp_pid, "STOP");
        let hung = Instant::now();
        for name in &names {
            assert_eq!(rename(&host, &store, name).await, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_secs(secs).saturating_sub(hung.elapsed())).await;
        signal(smtp_pid, "CONT");
        let doubled = expect_each_once(&own.servers, &database, &prefix, &names, Duration::from_secs(120)).await;
        assert_eq!(doubled, 0, "nothing mailed twice");
        println!("SMTP hung {secs} s: {} alerts and mails, once each", names.len());
    }

    // Killed and restarted.
    let prefix = "Smtp-restarted ";
    let names: Vec<String> = (0..10).map(|i| format!("{prefix}{i}")).collect();
    own.smtp.kill().await.unwrap();
    for name in &names {
        assert_eq!(rename(&host, &store, name).await, StatusCode::OK);
    }
    own.restart_smtp(Duration::from_secs(5)).await;
    assert_eq!(expect_each_once(&own.servers, &database, prefix, &names, Duration::from_secs(120)).await, 0);
    println!("SMTP killed and restarted: {} alerts and mails, once each", names.len());

    // The database hung: the API cannot save, so the events are produced
    // straight to the topic, as another service would.
    let db_pid = own.database.id().unwrap();
    for secs in hang_secs() {
        let prefix = format!("Db-hung-{secs}s ");
        let names: Vec<String> = (0..10).map(|i| format!("{prefix}{i}")).collect();
        signal(db_pid, "STOP");
        let hung = Instant::now();
        let producer = support::producer(&own.servers.kafka_brokers);
        for name in &names {
            let event = serde_json::to_vec(&json!({ "storeName": name, "storeStatus": "CLOSED" })).unwrap();
            support::send(&producer, "store-alerts-topic", None, &store, &event, &[]).await;
        }
        tokio::time::sleep(Duration::from_secs(secs).saturating_sub(hung.elapsed())).await;
        signal(db_pid, "CONT");
        let doubled = expect_each_once(&own.servers, &database, &prefix, &names, Duration::from_secs(120)).await;
        assert_eq!(doubled, 0, "nothing mailed twice");
        println!("database hung {secs} s: {} alerts and mails, once each", names.len());
    }

    let counters = host.counters("store-alert-to-email").await;
    println!("counters: {counters}");
    assert_eq!(counters["deadLettered"], 0, "{counters}");
    assert_eq!(counters["failed"], 0, "an outage is not a failure of the function: {counters}");
    assert!(counters["waitedForService"].as_u64().unwrap() > 0, "{counters}");
    let function = host.get_json("/admin/functions/store-alert-to-email").await;
    assert_eq!(function["state"], "running", "{function}");
}

/// The broker hung (SIGSTOP) for 30 s while 100 stores are updated through
/// the API: every PUT answers 2xx, and once the broker is back every update
/// is alerted and mailed once; no alert is for an update that is not saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_delays_events_but_loses_none() {
    let own = OwnServers::start().await;
    let database = format!("faults_{}", uuid::Uuid::new_v4().simple());
    let host = alerts_host(&own.servers, &database).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(create_store(&host, &format!("Broker store {i}")).await);
        }
        ids
    };
    // The group has joined before the broker hangs.
    assert_eq!(rename(&host, &ids[0], "Broker warm-up").await, StatusCode::OK);
    expect_each_once(&own.servers, &database, "Broker warm-up", &["Broker warm-up".into()], Duration::from_secs(60)).await;

    let broker = own.broker.id().unwrap();
    signal(broker, "STOP");
    let hung = Instant::now();
    let prefix = "Broker-hung ";
    let mut names = Vec::new();
    for i in 0..100 {
        let name = format!("{prefix}{i}");
        let status = rename(&host, &ids[i % ids.len()], &name).await;
        assert!(status.is_success(), "PUT {i} answered {status} while the broker hung");
        names.push(name);
    }
    let puts = hung.elapsed();
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(hung.elapsed())).await;
    signal(broker, "CONT");
    println!("100 PUTs while the broker hung took {} ms", puts.as_millis());
    assert_eq!(expect_each_once(&own.servers, &database, prefix, &names, Duration::from_secs(180)).await, 0);
    // What is stored is the last update of each store, and it was alerted.
    for id in &ids {
        let store = host.get_json(&format!("/api/stores/{id}")).await;
        let name = store["name"].as_str().unwrap();
        assert!(names.iter().any(|n| n == name), "{store}");
    }
    let counters = host.counters("store-alert-to-email").await;
    assert_eq!(counters["deadLettered"], 0, "{counters}");
}

/// kill -9 of the consuming host 10 times while 2,000 store updates flow
/// through the API of another host that is not killed: exactly 2,000 alerts
/// and 2,000 distinct mails, none missing; a mail sent again (killed between
/// the SMTP server's acceptance and the journal write) carries its twin's
/// Message-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consuming_host_loses_and_doubles_nothing() {
    let own = OwnServers::start().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    // The API host keeps the stores; the consuming host (its own database,
    // so its own deployments) keeps the alerts.
    let api = Host::start_on(&own.servers, &format!("faults_api_{run}"), &[]).await;
    let alerts_db = format!("faults_alerts_{run}");
    let mut consumer = alerts_host(&own.servers, &alerts_db).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(create_store(&api, &format!("Kill store {i}")).await);
        }
        ids
    };
    let total = 2000;
    let prefix = "Kill-";
    let names: Vec<String> = (0..total).map(|i| format!("{prefix}{i}")).collect();
    let updates = {
        let (names, ids) = (names.clone(), ids.clone());
        let (base, client) = (api.base.clone(), api.client.clone());
        tokio::spawn(async move {
            for (i, name) in names.iter().enumerate() {
                let body = json!({ "name": name, "address": "1 Main Street", "status": "CLOSED" });
                let url = format!("{base}/api/stores/{}", ids[i % ids.len()]);
                let status = client.put(url).json(&body).send().await.unwrap().status();
                assert_eq!(status, StatusCode::OK, "PUT {i}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let started = Instant::now();
    for kill in 1..=10 {
        tokio::time::sleep(Duration::from_millis(2500 + fastrand_ms(2000))).await;
        signal(consumer.pid(), "KILL");
        drop(consumer);
        consumer = Host::start_on(&own.servers, &alerts_db, &[("ALERT_DISTRIBUTION_LIST", "ops@example.com")]).await;
        println!("kill {kill} at {:?}", started.elapsed());
    }
    updates.await.unwrap();
    let doubled = expect_each_once(&own.servers, &alerts_db, prefix, &names, Duration::from_secs(900)).await;
    println!(
        "{total} updates, 10 kills: {total} alerts, {total} distinct mails in {:?}; {doubled} mail(s) sent twice with \
         their twin's Message-ID (killed between the SMTP server's acceptance and the journal write)",
        started.elapsed()
    );
    // The window is one database write long, for each record in flight when
    // the host is killed: at most the function's max-in-flight (8) on each
    // of the topic's partitions (the host creates 3), per kill.
    let in_flight_bound = 10 * 8 * 3;
    assert!(doubled <= in_flight_bound, "{doubled} mails sent twice in 10 kills");
    let counters = consumer.counters("store-alert-to-email").await;
    println!("last consuming host's counters: {counters}");
    assert_eq!(counters["deadLettered"], 0, "{counters}");
}

/// Some milliseconds below `max`, from the clock (the tests need no RNG).
fn fastrand_ms(max: u64) -> u64 {
    u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()) % max
}

/// Retries `$op` (a `Result`) until it is `Ok`, for up to 60 s: for the
/// database calls made while the database is not hung, which on a loaded
/// machine may take longer than the journal's timeout (the first ones open
/// the connection).
macro_rules! once_answered {
    ($what:expr, $op:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match $op {
                Ok(v) => break v,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{} failed for 60 s with the database running: {e}", $what);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }};
}

/// A partition's journal mark raised ahead, in the background, into a hung
/// database (SIGSTOP): the raise fails, the records below the mark still
/// start without the database, and the first record past the mark does not
/// start until a raise covering it is written, which the worker does itself
/// once the database is back. Without that fallback (a failed raise ahead
/// taken as written), the record past the mark would start while no raise
/// covers it, and its next owner would skip its journal.
///
/// Only the calls made while the database is hung are expected to fail; the
/// others are retried until answered (see [`once_answered`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_raise_of_the_journal_mark_is_written_again_before_a_record_past_it() {
    use runnel::platform::journal::{Journal, MARK_STEP, MAX_MARK_STEP};
    const TIMEOUT: Duration = Duration::from_secs(2);
    let own = OwnServers::start().await;
    let client = mongodb::Client::with_uri_str(&own.servers.mongodb_uri).await.unwrap();
    let database = client.database(&format!("faults_mark_{}", uuid::Uuid::new_v4().simple()));
    let journal = once_answered!("opening the journal", Journal::open(&database, TIMEOUT).await);
    let (function, topic) = ("marked", "marked-topic");
    let mut mark = journal.partition_mark(function, topic, 0);
    // The first record raises the mark itself, one step past it.
    assert!(once_answered!("the first record's raise", mark.ensure(0).await));
    assert_eq!(once_answered!("reading the mark", journal.mark(function, topic, 0).await), MARK_STEP);
    // Below half way to the mark: no database call.
    assert!(mark.ensure(MARK_STEP / 2 - 1).await.unwrap());

    let pid = own.database.id().unwrap();
    signal(pid, "STOP");
    let hung = Instant::now();
    // Half way to the mark, the next raise goes out in the background; these
    // records would fail if they waited for it (the database is hung).
    assert!(mark.ensure(MARK_STEP / 2).await.unwrap());
    assert!(mark.ensure(MARK_STEP - 1).await.unwrap());
    // The raise ahead times out (the journal's timeout)…
    tokio::time::sleep((TIMEOUT + Duration::from_millis(1500)).saturating_sub(hung.elapsed())).await;
    // …so the record past the mark waits for the worker's own raise, which
    // fails too while the database is hung.
    let refused = mark.ensure(MARK_STEP).await;
    signal(pid, "CONT");
    assert!(refused.is_err(), "a record past the mark started while no raise covering it was written");

    // The database is back: the worker's raise is written, a whole step
    // past the record (how far the step has grown by then depends on how far
    // apart the raises above came, which a loaded machine decides; the fast
    // flow below checks the growth).
    assert!(once_answered!("the raise once the database is back", mark.ensure(MARK_STEP).await));
    let raised = mark.raised().unwrap();
    assert!(raised >= 2 * MARK_STEP, "the raise covering the record at {MARK_STEP} went to {raised}");
    assert_eq!(once_answered!("reading the raised mark", journal.mark(function, topic, 0).await), raised);
    // The partition's next owner reads the journal of every record up to there.
    let mut next_owner = journal.partition_mark(function, topic, 0);
    assert!(!once_answered!("the next owner's last record below the mark", next_owner.ensure(raised - 1).await));
    assert!(once_answered!("the next owner's first record past the mark", next_owner.ensure(raised).await));

    // A fast flow writes its mark a few times, not once per MARK_STEP
    // records: 200,000 records at once, as fast as the database answers.
    let before = next_owner.raises();
    for offset in raised..raised + 200_000 {
        assert!(once_answered!("a record of the fast flow", next_owner.ensure(offset).await));
    }
    let raises = next_owner.raises() - before;
    assert!(raises <= 20, "200,000 records raised the mark {raises} times (one step of {MARK_STEP} would be 200)");
    let written = once_answered!("reading the mark after the fast flow", journal.mark(function, topic, 0).await);
    assert!(written > raised + 200_000 - 1 && written <= raised + 200_000 + 2 * MAX_MARK_STEP, "mark {written} after the fast flow");
}

/// A topic made anew numbers its records from 0 again: the new record at
/// offset 0 is not the old one, and neither the journal (which answered the
/// old one's calls) nor the insert's id derived from its record may take it
/// for a delivery of the old one. The broker keeps its topics in memory, so
/// starting it again is the topic deleted and made again, as in development.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_topic_made_anew_is_not_the_old_one_at_its_offset() {
    let mut own = OwnServers::start().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("faults_anew_{run}");
    let (topic, name) = ("made-anew", "made-anew");
    let manifest = support::recorder_manifest(name, topic, name, "recorded", "v1");
    let (uri, db) = (own.servers.mongodb_uri.clone(), database.clone());
    let recorded = |key: &'static str| {
        let (uri, database) = (uri.clone(), db.clone());
        async move {
            support::documents(&uri, &database, "recorded").await.into_iter().filter(|d| d["key"] == key).collect::<Vec<_>>()
        }
    };

    support::create_topic(&own.servers.kafka_brokers, topic, 1).await;
    let host = Host::start_on(&own.servers, &database, &[]).await;
    let (status, body) = host.deploy(name, &manifest, &support::fixture("recorder")).await;
    assert!(status.is_success(), "{status} {body}");
    support::produce(&own.servers.kafka_brokers, topic, Some(0), "old", b"old", &[]).await;
    let old = eventually(Duration::from_secs(60), "the old record recorded", || async {
        let found = recorded("old").await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(old[0]["offset"], 0, "{old:?}");
    host.terminate().await;

    own.restart_broker().await;
    support::create_topic(&own.servers.kafka_brokers, topic, 1).await;
    support::produce(&own.servers.kafka_brokers, topic, Some(0), "new", b"new", &[]).await;
    // The deployment is kept in the database: the next host runs it.
    let host = Host::start_on(&own.servers, &database, &[]).await;
    let new = eventually(Duration::from_secs(60), "the new record at offset 0 recorded", || async {
        let found = recorded("new").await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["offset"], 0, "the new topic's first record: {new:?}");
    assert_eq!(recorded("old").await.len(), 1, "the old record recorded once");
    let counters = host.counters(name).await;
    assert_eq!(counters["replayed"], 0, "no call answered from the old record's journal: {counters}");
}
