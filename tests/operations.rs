//! Running the host in production: librdkafka settings from the
//! environment, secrets kept out of logs and API output, health checks that
//! follow the database, and JSON logs.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Host, OwnServers, Servers, eventually, signal, start_failing};

const SECRET: &str = "Sup3r-s3cret-passw0rd";

/// `RUNNEL_KAFKA_<PROPERTY>` reaches librdkafka: a property it does not
/// know, a value it refuses, and a security protocol the broker does not
/// speak each stop the start, naming the variables, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_settings_reach_librdkafka() {
    let servers = Servers::from_env();
    let cases: Vec<(Vec<(&str, &str)>, Vec<&str>)> = vec![
        (vec![("RUNNEL_KAFKA_NO_SUCH_PROPERTY", "1")], vec!["RUNNEL_KAFKA_NO_SUCH_PROPERTY", "no.such.property"]),
        (vec![("RUNNEL_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")], vec!["RUNNEL_KAFKA_SECURITY_PROTOCOL", "security.protocol"]),
        (vec![("RUNNEL_KAFKA_GROUP_ID", "mine")], vec!["RUNNEL_KAFKA_GROUP_ID", "manifest"]),
        (
            vec![("RUNNEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"), ("RUNNEL_KAFKA_SASL_MECHANISM", "NO-SUCH-MECHANISM")],
            vec!["RUNNEL_KAFKA_SASL_MECHANISM", "NO-SUCH-MECHANISM"],
        ),
        // The broker here speaks no SASL: no broker answers with these settings.
        (
            vec![
                ("RUNNEL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                ("RUNNEL_KAFKA_SASL_MECHANISM", "PLAIN"),
                ("RUNNEL_KAFKA_SASL_USERNAME", "runnel"),
                ("RUNNEL_KAFKA_SASL_PASSWORD", SECRET),
            ],
            vec!["no Kafka broker answers", "RUNNEL_KAFKA_SECURITY_PROTOCOL", "RUNNEL_KAFKA_SASL_PASSWORD"],
        ),
    ];
    for (env, expected) in cases {
        let stderr = start_failing(&servers, &env).await;
        for needle in expected {
            assert!(stderr.contains(needle), "{env:?}: expected {needle:?} in: {stderr}");
        }
        assert!(!stderr.contains(SECRET), "{env:?}: the password was printed: {stderr}");
    }
}

/// A password in RUNNEL_SMTP_URL shows nowhere: not in the log (text or
/// JSON) while mail fails for it, not in any admin output, not in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_smtp_url_never_shows() {
    // Servers of its own: on shared ones, another test's host in the same
    // group could take the alert.
    let own = OwnServers::start().await;
    let servers = &own.servers;
    let smtp = servers.smtp_url.replace("smtp://", &format!("smtp://mailer:{SECRET}@"));
    let functions = servers.functions_dir.display().to_string();
    for format in ["text", "json"] {
        let host = Host::start(
            servers,
            &[
                ("RUNNEL_SMTP_URL", &smtp),
                ("RUNNEL_LOG_FORMAT", format),
                ("RUNNEL_LOG", "debug"),
                ("RUNNEL_FUNCTIONS_DIR", &functions),
                ("ALERT_DISTRIBUTION_LIST", "ops@example.com"),
            ],
        )
        .await;
        // An alert: the function sends mail through the URL (the SMTP
        // server here offers no AUTH, so the login fails and is retried).
        let store = support::store_alert_flow::create_store(&host, &format!("Secret {format}")).await;
        let id = store["id"].as_str().unwrap();
        let r = host
            .client
            .put(host.url(&format!("/api/stores/{id}")))
            .json(&json!({ "name": store["name"], "address": store["address"], "status": "CLOSED" }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        eventually(Duration::from_secs(60), "the mail to fail and be retried", || async {
            let c = host.counters("store-alert-to-email").await;
            (c["retried"].as_u64().unwrap_or(0) > 0).then_some(())
        })
        .await;
        let mut shown = Vec::new();
        for path in ["/admin/functions", "/admin/functions/store-alert-to-email", "/health/ready", "/openapi.json"] {
            let r = host.client.get(host.url(path)).send().await.unwrap();
            shown.push(r.text().await.unwrap());
        }
        let log = host.log_text();
        assert!(log.contains("authentication"), "the failed login is not in the log:\n{log}");
        for (what, text) in std::iter::once(("log", &log)).chain(shown.iter().map(|s| ("admin", s))) {
            assert!(!text.contains(SECRET), "{format}: the password shows in the {what}:\n{text}");
        }
    }
    // And in a start-up error about the URL.
    let stderr = start_failing(servers, &[("RUNNEL_SMTP_URL", &format!("smtpx://mailer:{SECRET}@mail"))]).await;
    assert!(stderr.contains("RUNNEL_SMTP_URL") && stderr.contains("mailer:***@mail"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// Readiness is the database, the broker and the functions: it turns false
/// while the database hangs (SIGSTOP) and true when it is back; liveness
/// stays true throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let own = OwnServers::start().await;
    let functions = own.servers.functions_dir.display().to_string();
    let host = Host::start(
        &own.servers,
        &[("RUNNEL_FUNCTIONS_DIR", &functions), ("ALERT_DISTRIBUTION_LIST", "ops@example.com")],
    )
    .await;
    let get = |path: &'static str| {
        let (client, url) = (host.client.clone(), host.url(path));
        async move {
            let r = client.get(url).timeout(Duration::from_secs(10)).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, live) = get("/health/live").await;
    assert_eq!((status, live), (StatusCode::OK, json!({ "status": "up" })));
    let (status, ready) = get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "up");
    for check in ["database", "broker", "functions"] {
        assert_eq!(ready["checks"][check]["status"], "up", "{ready}");
        assert!(ready["checks"][check]["latencyMs"].as_f64().unwrap() >= 0.0, "{ready}");
    }
    assert_eq!(ready["checks"]["functions"]["deployed"], 2, "{ready}");
    assert_eq!(ready["checks"]["functions"]["notLoaded"], json!([]), "{ready}");

    let db = own.database.id().unwrap();
    signal(db, "STOP");
    let down = eventually(Duration::from_secs(30), "readiness to turn false", || async {
        let (status, ready) = get("/health/ready").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(ready)
    })
    .await;
    assert_eq!(down["status"], "down");
    assert_eq!(down["checks"]["database"]["status"], "down", "{down}");
    assert!(down["checks"]["database"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
    assert_eq!(down["checks"]["broker"]["status"], "up", "{down}");
    // The probe itself answers within the check's bound.
    let started = std::time::Instant::now();
    let (status, _) = get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(get("/health/live").await.0, StatusCode::OK);

    signal(db, "CONT");
    let up = eventually(Duration::from_secs(60), "readiness to turn true again", || async {
        let (status, ready) = get("/health/ready").await;
        (status == StatusCode::OK).then_some(ready)
    })
    .await;
    assert_eq!(up["checks"]["database"]["status"], "up", "{up}");
}

/// `RUNNEL_LOG_FORMAT=json`: every line the host logs is one JSON object
/// with a timestamp, a level and a message; another format is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[("RUNNEL_LOG_FORMAT", "json")]).await;
    let log = host.log.clone();
    let (status, _) = host.terminate().await;
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        assert!(line["timestamp"].is_string() && line["level"].is_string() && line["message"].is_string(), "{line}");
    }
    let listening = lines.iter().find(|l| l["message"] == "listening").unwrap_or_else(|| panic!("no 'listening' line:\n{text}"));
    assert!(listening["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{listening}");
    assert_eq!(listening["level"], "INFO");

    let stderr = start_failing(&servers, &[("RUNNEL_LOG_FORMAT", "yaml")]).await;
    assert!(stderr.contains("RUNNEL_LOG_FORMAT") && stderr.contains("yaml"), "{stderr}");
}
