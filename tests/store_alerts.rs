//! The store-alert flow end to end, on real servers: the HTTP API, the broker,
//! the `store-alert-to-email` component, the document store and the SMTP
//! server. Also the stores' CRUD round trip and bad configuration at start.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Host, Servers, eventually, host_command, mails_with_subject};

const DISTRIBUTION_LIST: &str = "ops@example.com, owner@example.com";

fn flow_env(servers: &Servers) -> Vec<(&'static str, String)> {
    vec![
        ("RUNNEL_FUNCTIONS_DIR", servers.functions_dir.display().to_string()),
        ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST.to_string()),
    ]
}

fn as_env<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn create_store(host: &Host, name: &str) -> Value {
    let r = host
        .client
        .post(host.url("/api/stores"))
        .json(&json!({ "name": name, "address": "1 Main Street", "status": "OPEN" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let store: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/api/stores/{}", store["id"].as_str().unwrap()));
    store
}

async fn alerts_named(host: &Host, name: &str) -> Vec<Value> {
    let r = host.client.get(host.url("/api/store-alerts?size=1000")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let all: Vec<Value> = r.json().await.unwrap();
    all.into_iter().filter(|a| a["storeName"] == name).collect()
}

/// Must show: create a store, update it to CLOSED; within a bounded wait
/// exactly one StoreAlert with the right fields exists and exactly one mail
/// with the right To, Subject and body arrived. A malformed record on the
/// topic is dead-lettered without stopping the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_update_produces_one_alert_and_one_mail() {
    let servers = Servers::from_env();
    let env = flow_env(&servers);
    let host = Host::start(&servers, &as_env(&env)).await;

    let name = format!("Store {}", uuid::Uuid::new_v4());
    let store = create_store(&host, &name).await;
    let id = store["id"].as_str().unwrap();

    let mut update = store.clone();
    update["status"] = json!("CLOSED");
    let put_at = Instant::now();
    let before = chrono::Utc::now();
    let r = host.client.put(host.url(&format!("/api/stores/{id}"))).json(&update).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["status"], "CLOSED");
    assert_eq!(updated["createTimestamp"], store["createTimestamp"]);

    let subject = format!("Store Alert: {name}");
    let mails = eventually(Duration::from_secs(30), "the alert mail", || {
        let found = mails_with_subject(&servers.maildir, &subject);
        async move { (!found.is_empty()).then_some(found) }
    })
    .await;
    let put_to_mail = put_at.elapsed();
    let alerts = eventually(Duration::from_secs(10), "the stored alert", || async {
        let found = alerts_named(&host, &name).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    println!("first PUT to mail received (includes the group's first join): {} ms", put_to_mail.as_millis());

    // Anything extra (a duplicate) would have arrived by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = {
        let again = mails_with_subject(&servers.maildir, &subject);
        assert_eq!(again.len(), mails.len());
        again
    };
    assert_eq!(mails.len(), 1, "exactly one mail: {mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.subject, subject);
    assert_eq!(mail.body.trim(), "CLOSED");
    assert_eq!(mail.from, "runnel-test@example.com");
    for address in ["ops@example.com", "owner@example.com"] {
        assert!(mail.to.contains(address), "To {:?} lacks {address}", mail.to);
        assert!(mail.envelope_to.contains(address), "envelope {:?} lacks {address}", mail.envelope_to);
    }

    let alerts_now = alerts_named(&host, &name).await;
    assert_eq!(alerts_now.len(), 1, "exactly one alert: {alerts_now:?} (first seen {alerts:?})");
    let alert = &alerts_now[0];
    assert_eq!(alert["storeStatus"], "CLOSED");
    let timestamp: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(alert["timestamp"].clone()).expect("alert timestamp is ISO-8601");
    assert!(timestamp >= before - chrono::Duration::seconds(1) && timestamp <= chrono::Utc::now());
    let alert_id = alert["id"].as_str().unwrap();
    let r = host.client.get(host.url(&format!("/api/store-alerts/{alert_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(&r.json::<Value>().await.unwrap(), alert);

    // A record the function cannot read goes to the dead-letter topic; the
    // function keeps going.
    let producer = runnel::platform::kafka::EventProducer::new(&servers.kafka_brokers, Duration::from_secs(10), false).unwrap();
    producer
        .publish(runnel::platform::kafka::Event {
            topic: "store-alerts-topic",
            key: Some(b"garbage"),
            payload: b"{not json".to_vec(),
            headers: vec![],
        })
        .await
        .unwrap();
    let second = format!("Store {}", uuid::Uuid::new_v4());
    let store2 = create_store(&host, &second).await;
    let put_at = Instant::now();
    let r = host
        .client
        .put(host.url(&format!("/api/stores/{}", store2["id"].as_str().unwrap())))
        .json(&json!({ "name": second, "address": "2 Side Street", "status": "CLOSED" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let subject2 = format!("Store Alert: {second}");
    eventually(Duration::from_secs(30), "the mail after a bad record", || {
        let n = mails_with_subject(&servers.maildir, &subject2).len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    println!("next PUT to mail received (group joined): {} ms", put_at.elapsed().as_millis());
    let function = host.get_json("/admin/functions/store-alert-to-email").await;
    assert_eq!(function["state"], "running", "{function}");
    assert_eq!(function["running"]["topic"], "store-alerts-topic", "{function}");
    assert_eq!(function["running"]["group"], "store-alerts", "{function}");
    assert_eq!(function["running"]["counters"]["deadLettered"], 1, "{function}");
    assert!(function["running"]["counters"]["handled"].as_u64().unwrap() >= 2, "{function}");
}

/// The CRUD round trip of `/api/stores`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_crud_round_trip() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let c = &host.client;

    let a = create_store(&host, "Alpha").await;
    let b = create_store(&host, "Beta").await;
    assert_eq!(a["status"], "OPEN");
    assert!(a["createTimestamp"].is_string() && a["updateTimestamp"].is_string());
    let a_id = a["id"].as_str().unwrap();

    let got: Value = c.get(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, a);

    let r = c.get(host.url("/api/stores?size=1")).send().await.unwrap();
    assert_eq!(r.headers()["x-total-count"], "2");
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page.len(), 1);
    let r = c.get(host.url("/api/stores?size=1&page=1")).send().await.unwrap();
    let page2: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_ne!(page[0]["id"], page2[0]["id"], "pages do not overlap");

    let created = "2024-01-02T03:04:05.678Z";
    let r = c
        .put(host.url(&format!("/api/stores/{a_id}")))
        .json(&json!({ "id": a_id, "name": "Alpha 2", "address": "elsewhere", "status": "CLOSED", "createTimestamp": created }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let put: Value = r.json().await.unwrap();
    assert_eq!((put["name"].as_str(), put["createTimestamp"].as_str()), (Some("Alpha 2"), Some(created)));
    let got: Value = c.get(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, put);

    // A PATCH is a change: the server sets updateTimestamp anew, unless the
    // patch gives one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = c
        .patch(host.url(&format!("/api/stores/{a_id}")))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"address":"a third place"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    let stamp = |v: &Value, k: &str| v[k].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(stamp(&patched, "updateTimestamp") > stamp(&put, "updateTimestamp"), "{put} then {patched}");
    assert_eq!(patched["createTimestamp"], put["createTimestamp"]);
    let r = c
        .patch(host.url(&format!("/api/stores/{a_id}")))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"updateTimestamp":"2025-05-05T05:05:05.005Z"}"#)
        .send()
        .await
        .unwrap();
    let given: Value = r.json().await.unwrap();
    assert_eq!(given["updateTimestamp"], "2025-05-05T05:05:05.005Z");

    let r = c.delete(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(host.url("/api/stores")).send().await.unwrap();
    assert_eq!(r.headers()["x-total-count"], "1");
    let left: Vec<Value> = r.json().await.unwrap();
    assert_eq!(left, vec![b]);
}

/// Starts a host that must fail; returns what it printed.
async fn start_failing(servers: &Servers, env: &[(&str, &str)]) -> String {
    let mut cmd = host_command(servers, "test_bad_config", support::free_port(), env);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the host gave up within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "the host started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Bad configuration is a message naming the setting, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_setting() {
    let servers = Servers::from_env();
    let functions = servers.functions_dir.display().to_string();
    let dead_port = format!("127.0.0.1:{}", support::free_port());
    let bad_dir = tempdir("bad-wasm");
    let as_f = std::fs::read_to_string(servers.functions_dir.join("store-alert-to-email.toml"))
        .unwrap()
        .replace("name = \"store-alert-to-email\"", "name = \"f\"");
    std::fs::write(bad_dir.join("f.toml"), &as_f).unwrap();
    std::fs::write(bad_dir.join("f.wasm"), b"definitely not wasm").unwrap();
    let core_dir = tempdir("core-module");
    std::fs::write(core_dir.join("f.toml"), &as_f).unwrap();
    // The smallest core module: magic and version 1.
    std::fs::write(core_dir.join("f.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let manifest_dir = tempdir("bad-manifest");
    std::fs::write(manifest_dir.join("f.toml"), "name = 'f'\n[trigger.kafka]\ntopic = 't'\nshell = true\n").unwrap();
    let misnamed_dir = tempdir("misnamed");
    std::fs::copy(servers.functions_dir.join("store-alert-to-email.toml"), misnamed_dir.join("other.toml")).unwrap();
    std::fs::copy(servers.functions_dir.join("store-alert-to-email.wasm"), misnamed_dir.join("other.wasm")).unwrap();
    let misnamed_dir = misnamed_dir.display().to_string();
    let bad_dir = bad_dir.display().to_string();
    let core_dir = core_dir.display().to_string();
    let manifest_dir = manifest_dir.display().to_string();

    // (settings, what stderr must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (vec![("RUNNEL_MONGODB_URI", "postgres://nope")], &["RUNNEL_MONGODB_URI"]),
        (vec![("RUNNEL_MONGODB_URI", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500")], &["RUNNEL_MONGODB_URI"]),
        (vec![("RUNNEL_KAFKA_BROKERS", "no-port")], &["RUNNEL_KAFKA_BROKERS"]),
        (vec![("RUNNEL_KAFKA_BROKERS", &dead_port)], &["RUNNEL_KAFKA_BROKERS", "no Kafka broker answers"]),
        (vec![("RUNNEL_SMTP_URL", "http://mail")], &["RUNNEL_SMTP_URL"]),
        (vec![("RUNNEL_HTTP_ADDR", "everywhere")], &["RUNNEL_HTTP_ADDR"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", "/no/such/dir")], &["RUNNEL_FUNCTIONS_DIR"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", &functions), ("ALERT_DISTRIBUTION_LIST", "")], &["ALERT_DISTRIBUTION_LIST"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", &bad_dir), ("ALERT_DISTRIBUTION_LIST", "a@b.c")], &["f.wasm", "not a WebAssembly file"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", &core_dir), ("ALERT_DISTRIBUTION_LIST", "a@b.c")], &["f.wasm", "not a component"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", &manifest_dir)], &["f.toml", "line 4", "unknown field `shell`"]),
        (vec![("RUNNEL_FUNCTIONS_DIR", &misnamed_dir), ("ALERT_DISTRIBUTION_LIST", "a@b.c")], &["other.toml", "does not match"]),
        (vec![("RUNNEL_ADMIN_TOKEN", "short")], &["RUNNEL_ADMIN_TOKEN"]),
    ];
    for (env, expected) in cases {
        let stderr = start_failing(&servers, &env).await;
        for needle in expected {
            assert!(stderr.contains(needle), "{env:?}: expected {needle:?} in: {stderr}");
        }
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runnel-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
