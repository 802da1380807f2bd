//! The store-alert flow end to end, on real servers: the HTTP API, the broker,
//! the `store-alert-to-email` component, the document store and the SMTP
//! server. Also the stores' CRUD round trip and bad configuration at start.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    Host, Servers, start_failing,
    store_alert_flow::{DISTRIBUTION_LIST, create_store, store_alert_flow},
};

fn flow_env(servers: &Servers) -> Vec<(&'static str, String)> {
    vec![
        ("RUNNEL_FUNCTIONS_DIR", servers.functions_dir.display().to_string()),
        ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST.to_string()),
    ]
}

fn as_env<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
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

    store_alert_flow(&servers, &host).await;
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
