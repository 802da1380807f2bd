//! Deploying at runtime, on real servers: a deploy over HTTP is served by the
//! next record; bad components and manifests are refused with their cause
//! while the running version keeps serving; rollback; undeploy; the admin
//! token; two hosts sharing a database and a broker.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{percentile, Host, Servers, documents, eventually, fixture, recorder_manifest};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn produce(brokers: &str, topic: &str, key: &str) {
    let producer = runnel::platform::kafka::EventProducer::new(&runnel::platform::kafka::Cluster::new(brokers, Vec::new()), Duration::from_secs(10), false).unwrap();
    producer
        .publish(runnel::platform::kafka::Event { topic, key: Some(key.as_bytes()), payload: b"{}".to_vec(), headers: vec![] })
        .await
        .unwrap();
}

/// The label of the document recorded for `key`, once there is one.
async fn label_of(servers: &Servers, database: &str, collection: &str, key: &str) -> String {
    eventually(Duration::from_secs(30), &format!("the record '{key}' handled"), || async {
        let docs = documents(&servers.mongodb_uri, database, collection).await;
        let found: Vec<&Value> = docs.iter().filter(|d| d["key"] == key).collect();
        assert!(found.len() <= 1, "handled twice: {found:?}");
        found.first().map(|d| d["label"].as_str().unwrap().to_string())
    })
    .await
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuse_rollback_undeploy_over_http() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let (name, topic, group, collection) = (unique("rec"), unique("topic"), unique("group"), "records");
    let recorder = fixture("recorder");
    let manifest = |label: &str| recorder_manifest(&name, &topic, &group, collection, label);

    let (status, a) = host.deploy(&name, &manifest("A"), &recorder).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["state"], "running", "{a}");
    let version_a = a["activeVersion"].as_str().unwrap().to_string();
    assert_eq!(version_a.len(), 64, "a SHA-256: {a}");
    produce(&servers.kafka_brokers, &topic, "r1").await;
    assert_eq!(label_of(&servers, &host.database, collection, "r1").await, "A");

    // A new version is served by the next record.
    let (status, b) = host.deploy(&name, &manifest("B"), &recorder).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let version_b = b["activeVersion"].as_str().unwrap().to_string();
    assert_ne!(version_a, version_b);
    assert_eq!(b["versions"].as_array().unwrap().len(), 2, "{b}");
    produce(&servers.kafka_brokers, &topic, "r2").await;
    assert_eq!(label_of(&servers, &host.database, collection, "r2").await, "B");

    // Every refusal names its cause; B keeps serving.
    let good = manifest("C");
    let cases: Vec<(String, Vec<u8>, &str, &[&str])> = vec![
        (good.clone(), b"definitely not wasm".to_vec(), "component", &["not a WebAssembly file"]),
        (good.clone(), b"\0asm\x01\0\0\0".to_vec(), "component", &["core WebAssembly module, not a component"]),
        (good.clone(), fixture("keyvalue-importer"), "component", &["wasi:keyvalue/store@0.2.0-draft", "Runnel does not give"]),
        (good.clone(), fixture("other-world"), "component", &["does not export `handle`"]),
        (good.replace("[trigger.kafka]", "shell = true\n[trigger.kafka]"), recorder.clone(), "manifest", &["line 2", "unknown field `shell`"]),
        (good.replace("topic = '", "topic = 'a/"), recorder.clone(), "manifest", &["line 3", "not a valid topic name"]),
        (good.replace(&format!("topic = '{topic}'\n"), ""), recorder.clone(), "manifest", &["missing field `topic`"]),
        (good.replace("[capabilities.documents]", "[capabilities.sockets]\nopen = true\n[capabilities.documents]"), recorder.clone(), "manifest", &["unknown field `sockets`"]),
        (good.replace("value = 'C'", "env = 'NOT_SET_ON_THIS_HOST'\nrequired = true"), recorder.clone(), "manifest", &["NOT_SET_ON_THIS_HOST", "not set"]),
        (good.replace(&format!("name = '{name}'"), "name = 'someone-else'"), recorder.clone(), "manifest.name", &["does not match"]),
    ];
    for (manifest_text, component, field, expected) in &cases {
        let (status, problem) = host.deploy(&name, manifest_text, component).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], *field, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        for needle in *expected {
            assert!(detail.contains(needle), "expected {needle:?} in {detail:?}");
        }
    }
    // Not multipart, a part missing, an unknown part.
    let r = host.client.put(host.url(&format!("/admin/functions/{name}"))).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let form = reqwest::multipart::Form::new().text("manifest", good.clone());
    let r = host.client.put(host.url(&format!("/admin/functions/{name}"))).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "component");
    let form = reqwest::multipart::Form::new().text("manifest", good.clone()).text("extra", "x");
    let r = host.client.put(host.url(&format!("/admin/functions/{name}"))).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    println!("{} bad deployments refused with their cause", cases.len() + 3);

    let now = host.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(now["activeVersion"], version_b.as_str(), "{now}");
    assert_eq!(now["versions"].as_array().unwrap().len(), 2, "refused versions are not kept: {now}");
    produce(&servers.kafka_brokers, &topic, "r3").await;
    assert_eq!(label_of(&servers, &host.database, collection, "r3").await, "B");

    // Rollback: to the previous version, then to a named one.
    let (status, rolled) = host.send(Method::POST, &format!("/admin/functions/{name}/rollback"), None).await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(rolled["activeVersion"], version_a.as_str());
    produce(&servers.kafka_brokers, &topic, "r4").await;
    assert_eq!(label_of(&servers, &host.database, collection, "r4").await, "A");
    let body = serde_json::json!({ "version": version_b });
    let (status, rolled) = host.send(Method::POST, &format!("/admin/functions/{name}/rollback"), Some(&body)).await;
    assert_eq!((status, rolled["activeVersion"].as_str()), (StatusCode::OK, Some(version_b.as_str())), "{rolled}");
    let body = serde_json::json!({ "version": "0".repeat(64) });
    let (status, _) = host.send(Method::POST, &format!("/admin/functions/{name}/rollback"), Some(&body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = host.send(Method::POST, "/admin/functions/no-such-function/rollback", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Undeploy: nothing handles the topic; committed offsets stay, so the
    // next deploy starts with the record produced meanwhile.
    let (status, gone) = host.send(Method::DELETE, &format!("/admin/functions/{name}"), None).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(gone["state"], "undeployed");
    assert!(gone["activeVersion"].is_null());
    let (status, _) = host.send(Method::DELETE, &format!("/admin/functions/{name}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    produce(&servers.kafka_brokers, &topic, "r5").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let docs = documents(&servers.mongodb_uri, &host.database, collection).await;
    assert!(!docs.iter().any(|d| d["key"] == "r5"), "handled while undeployed");
    let (status, again) = host.deploy(&name, &manifest("C"), &recorder).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(label_of(&servers, &host.database, collection, "r5").await, "C");
    let docs = documents(&servers.mongodb_uri, &host.database, collection).await;
    assert_eq!(docs.len(), 5, "each record once: {docs:?}");
    let history: Vec<&str> =
        again["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(history, ["deploy", "deploy", "rollback", "rollback", "undeploy", "deploy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let servers = Servers::from_env();
    let token = "a-long-enough-admin-token";
    let host = Host::start(&servers, &[("RUNNEL_ADMIN_TOKEN", token)]).await;
    let url = host.url("/admin/functions");
    let r = host.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = host.client.get(&url).bearer_auth("a-wrong-token-of-some-length").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = host.client.get(&url).header("authorization", "Basic eDp5").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let form = reqwest::multipart::Form::new().text("manifest", "x").text("component", "y");
    let r = host.client.put(host.url("/admin/functions/x")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a deploy without the token is refused");
    let r = host.client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The application's routes are not behind the admin token.
    let r = host.client.get(host.url("/api/stores")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Deploy on host A; host B (same database and broker) serves the new
/// version within 2 s; a host C started afterwards serves it from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_host_is_served_by_every_host() {
    let servers = Servers::from_env();
    let database = format!("test_{}", uuid::Uuid::new_v4().simple());
    let a = Host::start_on(&servers, &database, &[]).await;
    let b = Host::start_on(&servers, &database, &[]).await;
    let (name, topic, group, collection) = (unique("shared"), unique("topic"), unique("group"), "records");
    let recorder = fixture("recorder");

    let mut latencies = Vec::new();
    for round in 0..10 {
        let label = format!("L{round}");
        let manifest = recorder_manifest(&name, &topic, &group, collection, &label);
        let started = Instant::now();
        let (status, deployed) = a.deploy(&name, &manifest, &recorder).await;
        assert_eq!(status, StatusCode::OK, "{deployed}");
        let version = deployed["activeVersion"].as_str().unwrap().to_string();
        let latency = eventually(Duration::from_secs(30), "host B running the new version", || async {
            let f = b.get_json(&format!("/admin/functions/{name}")).await;
            (f["running"]["version"] == version.as_str() && f["state"] == "running").then(|| started.elapsed())
        })
        .await;
        latencies.push(latency);
    }
    latencies.sort();
    println!(
        "deploy on host A to active on host B over {} deploys: p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 99.0).as_millis(),
        latencies.last().unwrap().as_millis()
    );

    // B serves records with it: with A gone, B owns the partition.
    drop(a);
    produce(&servers.kafka_brokers, &topic, "after-a").await;
    assert_eq!(label_of(&servers, &database, collection, "after-a").await, "L9");

    // A host started later serves the active version from the start.
    let c = Host::start_on(&servers, &database, &[]).await;
    let f = c.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(f["state"], "running", "{f}");
    assert_eq!(f["running"]["version"], f["activeVersion"], "{f}");
    // Let C join the group before B leaves it, so that C takes over.
    eventually(Duration::from_secs(30), "host C in the group", || async {
        let f = c.get_json(&format!("/admin/functions/{name}")).await;
        (f["running"]["counters"]["assignments"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    drop(b);
    produce(&servers.kafka_brokers, &topic, "after-b").await;
    assert_eq!(label_of(&servers, &database, collection, "after-b").await, "L9");
    drop(c);
}

/// A function that gave up runs again when a new version is deployed, and
/// the record it gave up on is the first the new version handles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_gave_up_runs_again_on_a_new_version() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let (name, topic, group) = (unique("giveup"), unique("topic"), unique("group"));
    let recorder = fixture("recorder");
    let good = recorder_manifest(&name, &topic, &group, "records", "fixed");
    // Without its `collection` setting the recorder gives up.
    let broken = good.replace("[capabilities.config.collection]\nvalue = 'records'\n", "");
    assert_ne!(broken, good);
    let (status, deployed) = host.deploy(&name, &broken, &recorder).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    produce(&servers.kafka_brokers, &topic, "first").await;
    let failed = eventually(Duration::from_secs(30), "the function failed", || async {
        let f = host.get_json(&format!("/admin/functions/{name}")).await;
        (f["state"] == "failed").then_some(f)
    })
    .await;
    assert!(failed["reason"].as_str().unwrap().contains("no collection"), "{failed}");

    let (status, fixed) = host.deploy(&name, &good, &recorder).await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert_eq!(fixed["state"], "running", "{fixed}");
    assert_eq!(label_of(&servers, &host.database, "records", "first").await, "fixed");
}

/// A trigger's filter: records that do not match are committed without
/// running the function and counted as `filtered`. A version on another
/// topic restarts only the consumer, which then reads the new topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_skip_records_and_a_new_topic_restarts_the_consumer() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let (name, topic, group) = (unique("filter"), unique("topic"), unique("group"));
    let recorder = fixture("recorder");
    let filtered = recorder_manifest(&name, &topic, &group, "records", "F")
        .replace("[capabilities.documents]", "[trigger.kafka.filter]\nkey-prefix = 'keep-'\n[capabilities.documents]");
    let (status, deployed) = host.deploy(&name, &filtered, &recorder).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    for key in ["keep-1", "drop-1", "drop-2", "keep-2"] {
        produce(&servers.kafka_brokers, &topic, key).await;
    }
    assert_eq!(label_of(&servers, &host.database, "records", "keep-2").await, "F");
    // The topic the host created has 3 partitions: the keys may be on
    // different ones, so the last record seen is not the last one done.
    let f = eventually(Duration::from_secs(30), "two records filtered and two handled", || async {
        let f = host.get_json(&format!("/admin/functions/{name}")).await;
        let counters = &f["running"]["counters"];
        (counters["filtered"].as_u64() >= Some(2) && counters["handled"].as_u64() >= Some(2)).then_some(f)
    })
    .await;
    assert_eq!(f["running"]["counters"]["filtered"], 2, "{f}");
    assert_eq!(f["running"]["counters"]["handled"], 2, "{f}");
    let keys: Vec<String> = documents(&servers.mongodb_uri, &host.database, "records")
        .await
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("keep-")), "{keys:?}");

    let other = unique("topic");
    let moved = recorder_manifest(&name, &other, &group, "records", "M");
    let (status, deployed) = host.deploy(&name, &moved, &recorder).await;
    assert_eq!(status, StatusCode::OK, "{deployed}");
    assert_eq!(deployed["running"]["topic"], other.as_str(), "{deployed}");
    produce(&servers.kafka_brokers, &other, "on-the-new-topic").await;
    assert_eq!(label_of(&servers, &host.database, "records", "on-the-new-topic").await, "M");
    produce(&servers.kafka_brokers, &topic, "keep-on-the-old-topic").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let docs = documents(&servers.mongodb_uri, &host.database, "records").await;
    assert!(!docs.iter().any(|d| d["key"] == "keep-on-the-old-topic"), "the old topic is still read");
}

/// Runs the `runnel` command; its exit status and what it printed.
fn runnel_command(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runnel")).args(args).env_clear().output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// `PUT /admin/functions/{name}` with a signature part.
async fn deploy_signed(host: &Host, name: &str, manifest: &str, component: &[u8], signature: &str) -> (StatusCode, Value) {
    let form = reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::text(manifest.to_string()))
        .part("component", reqwest::multipart::Part::bytes(component.to_vec()))
        .part("signature", reqwest::multipart::Part::text(signature.to_string()));
    let r = host.client.put(host.url(&format!("/admin/functions/{name}"))).multipart(form).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// With `RUNNEL_TRUSTED_KEYS` set (keys made here with `runnel keygen`),
/// an unsigned version, one signed by another key, a trusted signature
/// over other bytes and a malformed signature are all refused (422 naming
/// the reason, nothing deployed); a version signed with `runnel sign`
/// deploys with `runnel deploy`, and the versions listing names its signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_versions_signed_by_a_trusted_key_deploy() {
    let servers = Servers::from_env();
    let dir = std::env::temp_dir().join(unique("signing"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |file: &str| dir.join(file).display().to_string();
    let public = |printed: &str| {
        printed.lines().find_map(|l| l.strip_prefix("public key (for RUNNEL_TRUSTED_KEYS): ")).unwrap().trim().to_string()
    };
    let (ok, printed) = runnel_command(&["keygen", &path("release.pem")]);
    assert!(ok, "{printed}");
    let trusted = public(&printed);
    let (ok, printed) = runnel_command(&["keygen", &path("stranger.pem")]);
    assert!(ok, "{printed}");
    let (ok, printed) = runnel_command(&["keygen", &path("release.pem")]);
    assert!(!ok && printed.contains("never overwritten"), "{printed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(path("release.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let keys = format!("release={trusted}");
    let host = Host::start(&servers, &[("RUNNEL_TRUSTED_KEYS", &keys)]).await;
    let (name, topic, group) = (unique("signed"), unique("topic"), unique("group"));
    let manifest = recorder_manifest(&name, &topic, &group, "records", "signed");
    let recorder = fixture("recorder");
    std::fs::write(path(&format!("{name}.toml")), &manifest).unwrap();
    std::fs::write(path(&format!("{name}.wasm")), &recorder).unwrap();
    let sign = |key: &str| {
        let (ok, printed) = runnel_command(&["sign", "--key", &path(key), &path(&format!("{name}.toml"))]);
        assert!(ok, "{printed}");
        std::fs::read_to_string(path(&format!("{name}.sig"))).unwrap()
    };

    let refused = |(status, problem): (StatusCode, Value), says: &str| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], "signature", "{problem}");
        let detail = problem["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(says), "'{detail}' does not say '{says}'");
    };
    refused(host.deploy(&name, &manifest, &recorder).await, "not signed");
    let by_stranger = sign("stranger.pem");
    refused(deploy_signed(&host, &name, &manifest, &recorder, &by_stranger).await, "not in RUNNEL_TRUSTED_KEYS");
    let by_release = sign("release.pem");
    let other_manifest = manifest.replace("'signed'", "'tampered'");
    refused(deploy_signed(&host, &name, &other_manifest, &recorder, &by_release).await, "does not match");
    let mut other_component = recorder.clone();
    other_component.extend_from_slice(&[0, 1, 2]);
    refused(deploy_signed(&host, &name, &manifest, &other_component, &by_release).await, "does not match");
    refused(deploy_signed(&host, &name, &manifest, &recorder, "{\"signed\": true}").await, "not a signature document");
    let r = host.client.get(host.url(&format!("/admin/functions/{name}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a refused version was kept");

    // Signed by the trusted key, deployed with the CLI (which sends `<name>.sig`).
    let (ok, printed) = runnel_command(&["deploy", "--host", &host.base, &path(&format!("{name}.toml"))]);
    assert!(ok, "{printed}");
    let function: Value = host.client.get(host.url(&format!("/admin/functions/{name}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(function["state"], "running", "{function}");
    assert_eq!(function["versions"][0]["signer"], "release", "{function}");
    assert!(function["versions"][0].get("signature").is_none(), "the listing shows signers, not signatures");
    // The refused versions were never kept: nothing to roll back to.
    let r = host.client.post(host.url(&format!("/admin/functions/{name}/rollback"))).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(function["versions"].as_array().unwrap().len(), 1, "{function}");
    let (ok, table) = runnel_command(&["functions", "--host", &host.base]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_default();
    assert!(ok && table.starts_with("NAME") && table.lines().next().unwrap().ends_with("SIGNER") && row.ends_with("release"), "{table}");
    // It runs: a record is handled by the signed version.
    produce(&servers.kafka_brokers, &topic, "signed-1").await;
    assert_eq!(label_of(&servers, &host.database, "records", "signed-1").await, "signed");
    let _ = std::fs::remove_dir_all(&dir);
}
