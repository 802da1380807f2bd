//! The store-alert flow end to end, on real servers: the HTTP API, the broker,
//! the `store-alert-to-email` component, the document store and the SMTP
//! server. Also every route's bad input, and bad configuration at start.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
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
    let producer = runnel::kafka::EventProducer::new(&servers.kafka_brokers, Duration::from_secs(10)).unwrap();
    producer
        .publish(runnel::kafka::Event {
            topic: "store-alerts-topic",
            key: "garbage",
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
    let functions: Value = host.client.get(host.url("/api/functions")).send().await.unwrap().json().await.unwrap();
    let function = &functions[0];
    assert_eq!(function["name"], "store-alert-to-email");
    assert_eq!(function["state"], "running");
    assert_eq!(function["deadLettered"], 1, "{functions}");
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

    let r = c.delete(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(host.url(&format!("/api/stores/{a_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(host.url("/api/stores")).send().await.unwrap();
    assert_eq!(r.headers()["x-total-count"], "1");
    let left: Vec<Value> = r.json().await.unwrap();
    assert_eq!(left, vec![b]);
}

struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    status: StatusCode,
    field: Option<&'static str>,
}

fn case(method: Method, path: &str, body: Option<&str>, status: u16, field: Option<&'static str>) -> Case {
    Case {
        method,
        path: path.to_string(),
        content_type: body.map(|_| "application/json"),
        body: body.map(String::from),
        status: StatusCode::from_u16(status).unwrap(),
        field,
    }
}

/// Bad input on every route: the status, a problem+json body, the field
/// named; and nothing written by any refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_named_field() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[("RUNNEL_MAX_BODY_BYTES", "4096")]).await;
    let store = create_store(&host, "Kept").await;
    let id = store["id"].as_str().unwrap().to_string();
    let one = format!("/api/stores/{id}");
    let valid = r#"{"name":"n","address":"a"}"#;
    let huge = format!(r#"{{"name":"{}","address":"a"}}"#, "x".repeat(5000));
    use Method as M;

    let mut cases = vec![
        // POST /api/stores
        case(M::POST, "/api/stores", Some("{"), 400, None),
        case(M::POST, "/api/stores", Some("[1,2]"), 400, None),
        case(M::POST, "/api/stores", Some(r#"{"name":"n","address":"a"} x"#), 400, None),
        case(M::POST, "/api/stores", Some(r#"{"address":"a"}"#), 400, Some("name")),
        case(M::POST, "/api/stores", Some(r#"{"name":"n"}"#), 400, Some("address")),
        case(M::POST, "/api/stores", Some(r#"{"name":"  ","address":"a"}"#), 400, Some("name")),
        case(M::POST, "/api/stores", Some(r#"{"name":5,"address":"a"}"#), 400, Some("name")),
        case(M::POST, "/api/stores", Some(r#"{"name":"n","address":"a","status":"MAYBE"}"#), 400, Some("status")),
        case(M::POST, "/api/stores", Some(r#"{"name":"n","address":"a","createTimestamp":"yesterday"}"#), 400, Some("createTimestamp")),
        case(M::POST, "/api/stores", Some(r#"{"name":"n","address":"a","updateTimestamp":12}"#), 400, Some("updateTimestamp")),
        case(M::POST, "/api/stores", Some(&huge), 413, None),
        Case { content_type: Some("text/plain"), ..case(M::POST, "/api/stores", Some(valid), 415, None) },
        Case { content_type: None, ..case(M::POST, "/api/stores", Some(valid), 415, None) },
        // GET /api/stores
        case(M::GET, "/api/stores?size=0", None, 400, Some("size")),
        case(M::GET, "/api/stores?size=1001", None, 400, Some("size")),
        case(M::GET, "/api/stores?page=x", None, 400, Some("page")),
        // GET/PUT/DELETE /api/stores/{id}
        case(M::GET, "/api/stores/no-such-id", None, 404, None),
        case(M::PUT, "/api/stores/no-such-id", Some(valid), 404, None),
        case(M::PUT, &one, Some("{\"name\":"), 400, None),
        case(M::PUT, &one, Some(r#"{"address":"a"}"#), 400, Some("name")),
        case(M::PUT, &one, Some(r#"{"name":"n","address":"a","status":"closed"}"#), 400, Some("status")),
        case(M::PUT, &one, Some(r#"{"id":"other","name":"n","address":"a"}"#), 400, Some("id")),
        case(M::PUT, &one, Some(&huge), 413, None),
        Case { content_type: Some("application/xml"), ..case(M::PUT, &one, Some(valid), 415, None) },
        case(M::DELETE, "/api/stores/no-such-id", None, 404, None),
        case(M::PATCH, &one, Some(valid), 405, None),
        case(M::DELETE, "/api/stores", None, 405, None),
        // /api/store-alerts: read-only
        case(M::GET, "/api/store-alerts/no-such-id", None, 404, None),
        case(M::GET, "/api/store-alerts?size=5000", None, 400, Some("size")),
        case(M::GET, "/api/store-alerts?page=-1", None, 400, Some("page")),
        case(M::POST, "/api/store-alerts", Some(valid), 405, None),
        case(M::PUT, "/api/store-alerts/x", Some(valid), 405, None),
        case(M::DELETE, "/api/store-alerts/x", None, 405, None),
        // unknown routes
        case(M::GET, "/api/nothing-here", None, 404, None),
        case(M::GET, "/", None, 404, None),
    ];
    cases.push(case(M::POST, "/api/functions", Some(valid), 405, None));

    for c in &cases {
        let mut request = host.client.request(c.method.clone(), host.url(&c.path));
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(body) = &c.body {
            request = request.body(body.clone());
        }
        let r = request.send().await.unwrap();
        let what = format!("{} {} {:?}", c.method, c.path, c.body.as_deref().map(|b| &b[..b.len().min(60)]));
        assert_eq!(r.status(), c.status, "{what}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{what}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["status"], c.status.as_u16(), "{what}: {problem}");
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{what}: {problem}");
        assert_eq!(problem["field"].as_str(), c.field, "{what}: {problem}");
    }
    println!("{} bad-input cases refused as expected", cases.len());

    // Nothing was written by the refused requests.
    let r = host.client.get(host.url("/api/stores")).send().await.unwrap();
    assert_eq!(r.headers()["x-total-count"], "1");
    let kept: Value = host.client.get(host.url(&one)).send().await.unwrap().json().await.unwrap();
    assert_eq!(kept, store);
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
    std::fs::copy(servers.functions_dir.join("store-alert-to-email.toml"), bad_dir.join("f.toml")).unwrap();
    std::fs::write(bad_dir.join("f.wasm"), b"definitely not wasm").unwrap();
    let core_dir = tempdir("core-module");
    std::fs::copy(servers.functions_dir.join("store-alert-to-email.toml"), core_dir.join("f.toml")).unwrap();
    // The smallest core module: magic and version 1.
    std::fs::write(core_dir.join("f.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let manifest_dir = tempdir("bad-manifest");
    std::fs::write(manifest_dir.join("f.toml"), "name = 'f'\n[trigger.kafka]\ntopic = 't'\nshell = true\n").unwrap();
    let bad_dir = bad_dir.display().to_string();
    let core_dir = core_dir.display().to_string();
    let manifest_dir = manifest_dir.display().to_string();

    let cases: Vec<(Vec<(&str, &str)>, &[&str])> = vec![
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
        (vec![("RUNNEL_FUNCTIONS_DIR", &manifest_dir)], &["f.toml", "unknown field `shell`"]),
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
