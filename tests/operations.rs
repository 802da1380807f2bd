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
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
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

/// One sample of the exposition text.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text format: comment lines (`# TYPE`, `# HELP`,
/// `# EOF`) and `name{label="value",…} value` lines, label values unescaped.
fn parse_metrics(text: &str) -> Vec<Sample> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF line:\n{text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("not a sample: {line}"),
        };
        let mut labels = std::collections::BTreeMap::new();
        let value = if let Some(mut rest) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    break after;
                }
                rest = rest.strip_prefix(',').unwrap_or(rest);
                let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in: {line}"));
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("bad escape in: {line}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label in: {line}"),
                    }
                };
                labels.insert(key.to_string(), value);
                rest = &after[end + 1..];
            }
        } else {
            rest
        };
        let value = value.trim().split(' ').next().unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("bad value {v:?} ({e}) in: {line}")),
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`; none
/// when there is no such sample.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
}

/// `/metrics` parses, and its series move with traffic: records handled,
/// a bad one dead-lettered (failed by kind), the handling histogram, the
/// consumer lag per partition, the journal and outbox backlogs, requests
/// by route template and status with their latency, and the WebAssembly
/// instances and memory of a function that keeps instances warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_present_and_move_with_traffic() {
    let own = OwnServers::start().await;
    let servers = &own.servers;
    let functions = servers.functions_dir.display().to_string();
    let host = Host::start(servers, &[("RUNNEL_FUNCTIONS_DIR", &functions), ("ALERT_DISTRIBUTION_LIST", "ops@example.com")]).await;
    let scrape = || async {
        let r = host.client.get(host.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        parse_metrics(&r.text().await.unwrap())
    };
    let before = scrape().await;
    let version = host.get_json("/admin/functions/store-alert-to-email").await["activeVersion"].as_str().unwrap().to_string();
    let alert = [("function", "store-alert-to-email"), ("version", version.as_str())];
    assert_eq!(value(&before, "runnel_records_handled_total", &alert), None);
    for name in ["runnel_journal_backlog", "runnel_wasm_instances", "runnel_wasm_memory_bytes"] {
        assert!(value(&before, name, &[]).is_some(), "{name} missing");
    }

    // Traffic: two alerts, a bad record, a request no route has.
    for name in ["Metrics A", "Metrics B"] {
        let store = support::store_alert_flow::create_store(&host, name).await;
        let mut update = store.clone();
        update["status"] = json!("CLOSED");
        let r = host.client.put(host.url(&format!("/api/stores/{}", store["id"].as_str().unwrap()))).json(&update).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    support::produce(&servers.kafka_brokers, "store-alerts-topic", None, "bad", b"not json", &[]).await;
    assert_eq!(host.client.get(host.url("/no/such/route")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    // A function that keeps its instances warm.
    let topic = format!("metrics-probe-{}", uuid::Uuid::new_v4().simple());
    let manifest = format!("name = 'metrics-probe'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{topic}'\n[reuse]\nmax-messages = 1000\nmax-seconds = 600\n");
    let (status, body) = host.deploy("metrics-probe", &manifest, &support::fixture("probe")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let producer = support::producer(&servers.kafka_brokers);
    for i in 0..5 {
        support::send(&producer, &topic, None, &format!("k{i}"), b"ok", &[]).await;
    }

    let after = eventually(Duration::from_secs(60), "the metrics to show the traffic", || async {
        let m = scrape().await;
        let handled = value(&m, "runnel_records_handled_total", &alert).unwrap_or(0.0);
        let dead = value(&m, "runnel_records_dead_lettered_total", &alert).unwrap_or(0.0);
        let probe = value(&m, "runnel_records_handled_total", &[("function", "metrics-probe")]).unwrap_or(0.0);
        let lag = value(&m, "runnel_consumer_lag", &[("function", "store-alert-to-email"), ("topic", "store-alerts-topic")]);
        (handled >= 2.0 && dead >= 1.0 && probe >= 5.0 && lag.is_some()).then_some(m)
    })
    .await;
    let failed = value(&after, "runnel_records_failed_total", &[("function", "store-alert-to-email"), ("kind", "bad-input")]);
    assert!(failed.is_some_and(|n| n >= 1.0), "failed by kind: {failed:?}");
    let tries = value(&after, "runnel_handling_seconds_count", &alert).unwrap();
    assert!(tries >= 3.0, "handling histogram count {tries}");
    let in_buckets = value(&after, "runnel_handling_seconds_bucket", &[("function", "store-alert-to-email"), ("le", "+Inf")]).unwrap();
    assert_eq!(in_buckets, tries);
    assert!(value(&after, "runnel_handling_seconds_sum", &alert).unwrap() > 0.0);
    // Lag: one series per partition of the topic (3), none behind once handled.
    let lag: Vec<&Sample> = after.iter().filter(|s| s.name == "runnel_consumer_lag" && s.labels["function"] == "store-alert-to-email").collect();
    assert!(!lag.is_empty() && lag.iter().all(|s| s.labels["partition"].parse::<i32>().is_ok()), "{lag:?}");
    eventually(Duration::from_secs(30), "the lag to be 0", || async {
        let m = scrape().await;
        (value(&m, "runnel_consumer_lag", &[("function", "store-alert-to-email")]) == Some(0.0)).then_some(())
    })
    .await;
    assert!(value(&after, "runnel_outbox_backlog", &[("collection", "stores")]).is_some(), "no outbox backlog of stores");
    assert!(value(&after, "runnel_journal_backlog", &[]).unwrap() >= 0.0);
    // HTTP by route template.
    let puts = value(&after, "runnel_http_requests_total", &[("method", "PUT"), ("route", "/api/stores/{id}"), ("status", "200")]);
    assert_eq!(puts, Some(2.0));
    let unmatched = value(&after, "runnel_http_requests_total", &[("route", "unmatched"), ("status", "404")]);
    assert_eq!(unmatched, Some(1.0));
    let put_seconds = value(&after, "runnel_http_request_duration_seconds_count", &[("method", "PUT"), ("route", "/api/stores/{id}")]);
    assert_eq!(put_seconds, Some(2.0));
    // The warm probe instance is alive, with its memory.
    assert!(value(&after, "runnel_wasm_instances", &[]).unwrap() >= 1.0);
    assert!(value(&after, "runnel_wasm_memory_bytes", &[]).unwrap() >= 65536.0);
    // Undeployed: its warm instances are gone.
    let r = host.client.delete(host.url("/admin/functions/metrics-probe")).send().await.unwrap();
    assert!(r.status().is_success());
    eventually(Duration::from_secs(30), "the warm instances to go", || async {
        let m = scrape().await;
        (value(&m, "runnel_wasm_instances", &[]) == Some(0.0) && value(&m, "runnel_wasm_memory_bytes", &[]) == Some(0.0)).then_some(())
    })
    .await;
}

/// One trace id follows a PUT all the way: taken from the request's
/// `traceparent`, it is in the HTTP access log line, in the Kafka headers
/// of the event, on the function's log line, and in the mail's
/// `Traceparent`; a request without one starts its own trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_a_put_to_its_mail() {
    use support::store_alert_flow::{DISTRIBUTION_LIST, create_store};
    let servers = Servers::from_env();
    let functions = servers.functions_dir.display().to_string();
    let host = Host::start(
        &servers,
        &[("RUNNEL_FUNCTIONS_DIR", &functions), ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST), ("RUNNEL_LOG_FORMAT", "json")],
    )
    .await;
    let name = format!("Traced {}", uuid::Uuid::new_v4());
    let mut store = create_store(&host, &name).await;
    let id = store["id"].as_str().unwrap().to_string();

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    store["status"] = json!("CLOSED");
    let r = host.client.put(host.url(&format!("/api/stores/{id}"))).header("traceparent", &parent).json(&store).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(answered.starts_with(&format!("00-{trace_id}-")) && answered != parent, "{answered}");

    // The event's Kafka headers.
    let records = support::read_topic(&servers.kafka_brokers, "store-alerts-topic", Duration::from_secs(30), |records| {
        records.iter().any(|r| r.key == id)
    })
    .await;
    let event = records.iter().find(|r| r.key == id).unwrap();
    let header = event.header("traceparent").unwrap_or_else(|| panic!("no traceparent on the event: {:?}", event.headers));
    assert!(header.starts_with(&format!("00-{trace_id}-")), "{header}");

    // The mail.
    let subject = format!("Store Alert: {name}");
    let mail = eventually(Duration::from_secs(30), "the alert mail", || {
        let found = support::mails_with_subject(&servers.maildir, &subject);
        async move { found.into_iter().next() }
    })
    .await;
    assert!(mail.traceparent.starts_with(&format!("00-{trace_id}-")), "mail Traceparent: '{}'", mail.traceparent);

    // The log lines: the access line of the PUT and the function's own line.
    let lines: Vec<Value> = eventually(Duration::from_secs(10), "the function's log line", || {
        let lines: Vec<Value> = host.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let logged = lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains(&name) && m.contains("mailed")));
        async move { logged.then_some(lines) }
    })
    .await;
    let access = lines
        .iter()
        .find(|l| l["target"] == "runnel::access" && l["method"] == "PUT" && l["path"] == format!("/api/stores/{id}"))
        .unwrap_or_else(|| panic!("no access line for the PUT"));
    assert_eq!(access["trace_id"], trace_id.as_str(), "{access}");
    assert_eq!(access["status"], 200, "{access}");
    let function_line = lines.iter().find(|l| l["message"].as_str().is_some_and(|m| m.contains(&name) && m.contains("mailed"))).unwrap();
    assert!(function_line.to_string().contains(&trace_id), "the function's line has no trace id: {function_line}");

    // Without a traceparent, a request starts its own trace.
    let r = host.client.get(host.url(&format!("/api/stores/{id}"))).send().await.unwrap();
    let own = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(own.starts_with("00-") && !own.contains(&trace_id), "{own}");
}

/// With an OTLP endpoint set, the spans of a PUT and of the record its
/// event became reach the collector (protobuf over HTTP, the default): the
/// request's span continues the caller's `traceparent`, the record's span
/// is its child in the same trace, and the resource names the service.
/// Settings the exporter cannot use stop the start, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use std::sync::{Arc, Mutex};
    use support::store_alert_flow::{DISTRIBUTION_LIST, create_store};

    // A collector on loopback: keeps every export it is sent, with its
    // content type (checked below, not in the handler, where a failed
    // assertion would only look like a missing export).
    type Received = Arc<Mutex<Vec<(String, Result<ExportTraceServiceRequest, String>)>>>;
    let received: Received = Arc::default();
    let kept = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string());
                kept.lock().unwrap().push((content_type, request));
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    // Servers of its own: on shared ones, another test's host in the same
    // group could take the record, and export its span elsewhere.
    let own = OwnServers::start().await;
    let servers = &own.servers;
    let functions = servers.functions_dir.display().to_string();
    let host = Host::start(
        servers,
        &[
            ("RUNNEL_FUNCTIONS_DIR", &functions),
            ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let name = format!("Exported {}", uuid::Uuid::new_v4());
    let mut store = create_store(&host, &name).await;
    let id = store["id"].as_str().unwrap().to_string();
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller = "00f067aa0ba902b7";
    store["status"] = json!("CLOSED");
    let r = host
        .client
        .put(host.url(&format!("/api/stores/{id}")))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&store)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // And a record the function refuses (bad input), in the same trace.
    let bad_parent = "00f067aa0ba902b8";
    support::produce(&servers.kafka_brokers, "store-alerts-topic", None, "not-json", b"{ not json", &[("traceparent", &format!("00-{trace_id}-{bad_parent}-01"))]).await;

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()).map(|v| format!("{:?}", v.value))
    };
    // SERVER is 2, CONSUMER is 5 in OTLP.
    let (service, server, consumer, refused) = eventually(Duration::from_secs(30), "the request's and the records' spans", || {
        let requests: Vec<ExportTraceServiceRequest> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(content_type, request)| {
                assert_eq!(content_type, "application/x-protobuf");
                request.clone().expect("an OTLP protobuf export")
            })
            .collect();
        let mut found = (None, None, None, None);
        for resource_spans in &requests {
            for span in resource_spans.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                if hex(&span.trace_id) != trace_id {
                    continue;
                }
                if span.kind == 2 {
                    found.0 = resource_spans.resource_spans[0].resource.as_ref().and_then(|r| {
                        r.attributes.iter().find(|a| a.key == "service.name").map(|a| format!("{:?}", a.value))
                    });
                    found.1 = Some(span.clone());
                } else if span.kind == 5 && hex(&span.parent_span_id) == bad_parent {
                    found.3 = Some(span.clone());
                } else if span.kind == 5 {
                    found.2 = Some(span.clone());
                }
            }
        }
        let found = match found {
            (service, Some(server), Some(consumer), Some(refused)) => Some((service, server, consumer, refused)),
            _ => None,
        };
        async move { found }
    })
    .await;
    assert!(service.is_some_and(|s| s.contains("\"runnel\"")), "the resource names another service");
    assert_eq!(server.name, "PUT /api/stores/{id}");
    assert_eq!(hex(&server.parent_span_id), caller, "the request's span continues the caller's");
    assert!(attribute(&server, "http.response.status_code").is_some_and(|v| v.contains("200")), "{server:?}");
    assert_eq!(consumer.name, "process store-alerts-topic");
    assert_eq!(consumer.parent_span_id, server.span_id, "the record's span is the request's child");
    assert!(attribute(&consumer, "runnel.function").is_some_and(|v| v.contains("store-alert-to-email")), "{consumer:?}");
    assert!(attribute(&consumer, "runnel.outcome").is_some_and(|v| v.contains("\"handled\"")), "{consumer:?}");
    assert_eq!(consumer.status.as_ref().map_or(0, |s| s.code), 0, "a handled record's span is not an error: {consumer:?}");
    // The refused record's span says it was dead-lettered, as an error with the reason.
    assert!(attribute(&refused, "runnel.outcome").is_some_and(|v| v.contains("dead-lettered")), "{refused:?}");
    let status = refused.status.clone().unwrap_or_default();
    assert!(status.code == 2 && status.message.contains("bad input"), "{refused:?}");
    assert!(consumer.end_time_unix_nano >= consumer.start_time_unix_nano && consumer.start_time_unix_nano >= server.start_time_unix_nano);
    drop(host);

    let grpc = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    let gzip = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    let no_scheme = [("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")];
    let secret = format!("grpcs://collector:{SECRET}@collector:4317");
    let with_secret = [("OTEL_EXPORTER_OTLP_ENDPOINT", secret.as_str())];
    for (env, says) in [
        (&grpc[..], "OTEL_EXPORTER_OTLP_PROTOCOL: grpc is not built in"),
        (&gzip[..], "OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip' is not built in"),
        (&no_scheme[..], "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' is not an http"),
        (&with_secret[..], "OTEL_EXPORTER_OTLP_ENDPOINT: 'grpcs://collector:***@collector:4317' is not an http"),
    ] {
        let stderr = start_failing(servers, env).await;
        assert!(stderr.contains(says), "{env:?}: {stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
}
