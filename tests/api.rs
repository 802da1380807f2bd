//! The HTTP API on real servers: a table of bad requests for every route and
//! method, the OpenAPI document against the routes that exist, and the CRUD
//! of persons and comicbooks (PATCH, paging, deleting a credited person).

mod support;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Host, Servers};

const RESOURCES: [&str; 4] = ["/api/persons", "/api/comicbooks", "/api/stores", "/api/store-alerts"];
const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    status: u16,
    field: Option<String>,
}

fn case(method: Method, path: &str, body: Option<&str>, status: u16, field: Option<&str>) -> Case {
    let content_type = match (&method, body) {
        (_, None) => None,
        (&Method::PATCH, Some(_)) => Some("application/merge-patch+json"),
        (_, Some(_)) => Some("application/json"),
    };
    Case {
        method,
        path: path.to_string(),
        content_type,
        body: body.map(String::from),
        status,
        field: field.map(String::from),
    }
}

fn with_type(mut c: Case, content_type: Option<&'static str>) -> Case {
    c.content_type = content_type;
    c
}

/// Bad requests every writable resource refuses the same way. `valid` is a
/// valid body, `required` its required fields, `one` an existing item's path.
fn writable_cases(collection: &str, one: &str, valid: &Value, required: &[&str], huge: &str) -> Vec<Case> {
    let v = valid.to_string();
    let mut cases = vec![
        case(Method::GET, &format!("{collection}?size=0"), None, 400, Some("size")),
        case(Method::GET, &format!("{collection}?size=1001"), None, 400, Some("size")),
        case(Method::GET, &format!("{collection}?page=-1"), None, 400, Some("page")),
        case(Method::GET, &format!("{collection}?page=x&size=2"), None, 400, Some("page")),
        case(Method::GET, &format!("{collection}/no-such-id"), None, 404, None),
        case(Method::GET, &format!("{collection}/%FF%FE"), None, 400, Some("id")),
        case(Method::DELETE, &format!("{collection}/%FF"), None, 400, Some("id")),
        case(Method::PUT, &format!("{collection}/no-such-id"), Some(&v), 404, None),
        case(Method::PATCH, &format!("{collection}/no-such-id"), Some("{}"), 404, None),
        case(Method::DELETE, &format!("{collection}/no-such-id"), None, 404, None),
        case(Method::PUT, collection, Some(&v), 405, None),
        case(Method::PATCH, collection, Some("{}"), 405, None),
        case(Method::DELETE, collection, None, 405, None),
        case(Method::POST, one, Some(&v), 405, None),
    ];
    for (method, path) in [(Method::POST, collection), (Method::PUT, one), (Method::PATCH, one)] {
        cases.extend([
            case(method.clone(), path, Some("{"), 400, None),
            case(method.clone(), path, Some("[]"), 400, None),
            case(method.clone(), path, Some("\"text\""), 400, None),
            case(method.clone(), path, Some(&format!("{v} trailing")), 400, None),
            case(method.clone(), path, Some(huge), 413, None),
            with_type(case(method.clone(), path, Some(&v), 415, None), Some("text/plain")),
            with_type(case(method.clone(), path, Some(&v), 415, None), None),
        ]);
        for field in required {
            let mut wrong_type = valid.clone();
            wrong_type[field] = json!(42);
            cases.push(case(method.clone(), path, Some(&wrong_type.to_string()), 400, Some(field)));
            let mut blank = valid.clone();
            blank[field] = json!("   ");
            cases.push(case(method.clone(), path, Some(&blank.to_string()), 400, Some(field)));
            if method == Method::PATCH {
                // A merge patch's null removes the field.
                cases.push(case(method.clone(), path, Some(&json!({ *field: null }).to_string()), 400, Some(field)));
            } else {
                let mut missing = valid.clone();
                missing.as_object_mut().unwrap().remove(*field);
                cases.push(case(method.clone(), path, Some(&missing.to_string()), 400, Some(field)));
            }
        }
    }
    for bad_id in [json!(""), json!("a/b"), json!("line\nbreak"), json!(7)] {
        let mut proposed = valid.clone();
        proposed["id"] = bad_id;
        cases.push(case(Method::POST, collection, Some(&proposed.to_string()), 400, Some("id")));
    }
    for method in [Method::PUT, Method::PATCH] {
        let mut other_id = valid.clone();
        other_id["id"] = json!("another-id");
        cases.push(case(method, one, Some(&other_id.to_string()), 400, Some("id")));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_input_with_one_problem_shape() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[("RUNNEL_MAX_BODY_BYTES", "4096")]).await;
    let huge = json!({ "name": "x".repeat(5000) }).to_string();

    let person = json!({ "firstname": "Ada", "lastname": "Lovelace" });
    let p = host.create("/api/persons", person.clone()).await;
    let embedded = json!({ "id": p["id"], "firstname": "Ada", "lastname": "Lovelace" });
    let comicbook = json!({ "name": "Engines", "persons": { "WRITER": [embedded] } });
    let c = host.create("/api/comicbooks", comicbook.clone()).await;
    let store = json!({ "name": "Shop", "address": "1 Main St", "status": "OPEN" });
    let s = host.create("/api/stores", store.clone()).await;
    let p_one = format!("/api/persons/{}", p["id"].as_str().unwrap());
    let c_one = format!("/api/comicbooks/{}", c["id"].as_str().unwrap());
    let s_one = format!("/api/stores/{}", s["id"].as_str().unwrap());

    let mut cases = Vec::new();
    cases.extend(writable_cases("/api/persons", &p_one, &person, &["firstname", "lastname"], &huge));
    cases.extend(writable_cases("/api/comicbooks", &c_one, &comicbook, &["name"], &huge));
    cases.extend(writable_cases("/api/stores", &s_one, &store, &["name", "address"], &huge));

    // What only one resource has.
    let mut role = comicbook.clone();
    role["persons"] = json!({ "DRUMMER": [] });
    let mut person_type = comicbook.clone();
    person_type["persons"] = json!({ "WRITER": "Ada" });
    let mut no_lastname = comicbook.clone();
    no_lastname["persons"] = json!({ "INKER": [{ "id": "x", "firstname": "Ada" }] });
    let mut twice = comicbook.clone();
    twice["persons"] = json!({ "WRITER": [embedded, embedded] });
    for (method, path) in [(Method::POST, "/api/comicbooks"), (Method::PUT, c_one.as_str()), (Method::PATCH, c_one.as_str())] {
        cases.push(case(method.clone(), path, Some(&role.to_string()), 400, Some("persons.DRUMMER")));
        cases.push(case(method.clone(), path, Some(&person_type.to_string()), 400, Some("persons.WRITER")));
        cases.push(case(method.clone(), path, Some(&no_lastname.to_string()), 400, Some("persons.INKER[0].lastname")));
        cases.push(case(method, path, Some(&twice.to_string()), 400, Some("persons.WRITER[1].id")));
    }
    for (method, path) in [(Method::POST, "/api/stores"), (Method::PUT, s_one.as_str()), (Method::PATCH, s_one.as_str())] {
        for (field, value) in [("status", json!("MAYBE")), ("status", json!("closed")), ("createTimestamp", json!("yesterday")), ("updateTimestamp", json!(12))] {
            let mut bad = store.clone();
            bad[field] = value;
            cases.push(case(method.clone(), path, Some(&bad.to_string()), 400, Some(field)));
        }
    }
    // Store alerts: created by the function only.
    let alert_one = "/api/store-alerts/no-such-id";
    cases.extend([
        case(Method::GET, "/api/store-alerts?size=5000", None, 400, Some("size")),
        case(Method::GET, "/api/store-alerts?page=z", None, 400, Some("page")),
        case(Method::GET, alert_one, None, 404, None),
        case(Method::DELETE, alert_one, None, 404, None),
        case(Method::POST, "/api/store-alerts", Some("{}"), 405, None),
        case(Method::PUT, "/api/store-alerts", Some("{}"), 405, None),
        case(Method::PATCH, "/api/store-alerts", Some("{}"), 405, None),
        case(Method::DELETE, "/api/store-alerts", None, 405, None),
        case(Method::POST, alert_one, Some("{}"), 405, None),
        case(Method::PUT, alert_one, Some("{}"), 405, None),
        case(Method::PATCH, alert_one, Some("{}"), 405, None),
    ]);
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        cases.push(case(method.clone(), "/admin/functions", None, 405, None));
        cases.push(case(method, "/openapi.json", None, 405, None));
    }
    for path in ["/", "/api", "/api/nothing", "/api/persons/a/b", "/api/persons-x"] {
        cases.push(case(Method::GET, path, None, 404, None));
    }

    let mut statuses = BTreeSet::new();
    for c in &cases {
        let mut request = host.client.request(c.method.clone(), host.url(&c.path));
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(body) = &c.body {
            request = request.body(body.clone());
        }
        let r = request.send().await.unwrap();
        let what = format!("{} {} {:?}", c.method, c.path, c.body.as_deref().map(|b| &b[..b.len().min(80)]));
        assert_eq!(r.status().as_u16(), c.status, "{what}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{what}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["status"], c.status, "{what}: {problem}");
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{what}: {problem}");
        assert_eq!(problem["field"].as_str(), c.field.as_deref(), "{what}: {problem}");
        statuses.insert(c.status);
    }
    assert_eq!(statuses, BTreeSet::from([400, 404, 405, 413, 415]));
    println!("{} bad-input cases refused as expected (statuses {statuses:?})", cases.len());

    // Nothing was written by any refused request.
    for (path, original) in [(&p_one, &p), (&c_one, &c), (&s_one, &s)] {
        assert_eq!(&host.get_json(path).await, original, "{path} changed");
    }
    for collection in &RESOURCES[..3] {
        let r = host.client.get(host.url(collection)).send().await.unwrap();
        assert_eq!(r.headers()["x-total-count"], "1", "{collection}");
    }
}

/// Every method that answers something other than 405 on a documented path,
/// and every route among likely others, is in the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let doc = host.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (path.clone(), m.to_uppercase())))
        .collect();

    let mut probed_paths: BTreeSet<String> = paths.keys().cloned().collect();
    for extra in ["/", "/api", "/admin", "/health", "/metrics", "/api/functions", "/admin/functions/x/y", "/openapi.yaml", "/api/persons/x/y"] {
        probed_paths.insert(extra.to_string());
    }
    let mut routes = BTreeSet::new();
    for path in &probed_paths {
        let concrete = path.replace("{id}", "no-such-id").replace("{name}", "no-such-function");
        for method in METHODS {
            let r = host
                .client
                .request(method.clone(), host.url(&concrete))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status();
            // An event stream (the dashboard's) never ends: its head says enough.
            let streaming = r.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let problem: Value = if streaming { Value::Null } else { r.json().await.unwrap_or(Value::Null) };
            let no_route = status == StatusCode::NOT_FOUND
                && problem["detail"].as_str().is_some_and(|d| d.starts_with("no route"));
            if status != StatusCode::METHOD_NOT_ALLOWED && !no_route {
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from /openapi.json: {undocumented:?}");
    let dead: Vec<_> = documented.difference(&routes).collect();
    assert!(dead.is_empty(), "documented but not routed: {dead:?}");
    for path in RESOURCES {
        assert!(paths.contains_key(path) && paths.contains_key(&format!("{path}/{{id}}")), "{path}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["Person", "PersonInput", "Comicbook", "ComicbookInput", "Store", "StoreInput", "StoreAlert", "Problem", "Role", "FunctionView"] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    // Every data operation says it may answer 503: the database down, or the request's deadline.
    for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/api/")) {
        for (method, operation) in item.as_object().unwrap() {
            let unavailable = operation["responses"]["503"]["description"].as_str().unwrap_or_default();
            assert!(
                unavailable.contains("database is unavailable") && unavailable.contains("RUNNEL_REQUEST_TIMEOUT_MS"),
                "{method} {path}: 503 is described as {unavailable:?}"
            );
            assert_eq!(
                operation["responses"]["503"]["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path}"
            );
        }
    }
    println!("{} routes, all documented", routes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persons_and_comicbooks_round_trip() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;

    let r = host.client.post(host.url("/api/persons")).json(&json!({ "firstname": "Jack", "lastname": "Kirby" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let jack: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/api/persons/{}", jack["id"].as_str().unwrap()));
    assert_eq!(host.get_json(&location).await, jack);

    // PATCH: a merge patch changes only what it names.
    let (status, patched) = host.send(Method::PATCH, &location, Some(&json!({ "firstname": "Jacob" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched, json!({ "id": jack["id"], "firstname": "Jacob", "lastname": "Kirby" }));
    let (status, put) = host.send(Method::PUT, &location, Some(&json!({ "id": jack["id"], "firstname": "Jack", "lastname": "Kirby" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put, jack);

    let stan = host.create("/api/persons", json!({ "firstname": "Stan", "lastname": "Lee" })).await;
    let comic = host
        .create(
            "/api/comicbooks",
            json!({ "name": "Fantastic Four #1", "persons": { "WRITER": [stan], "PENCILLER": [jack], "EDITOR": [] } }),
        )
        .await;
    assert_eq!(comic["persons"], json!({ "WRITER": [stan], "PENCILLER": [jack] }));
    let comic_path = format!("/api/comicbooks/{}", comic["id"].as_str().unwrap());
    let (status, renamed) = host.send(Method::PATCH, &comic_path, Some(&json!({ "name": "FF #1" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["persons"], comic["persons"]);
    assert_eq!(renamed["name"], "FF #1");

    // Paging is stable and counted.
    for i in 0..5 {
        host.create("/api/persons", json!({ "firstname": format!("P{i}"), "lastname": "X" })).await;
    }
    let mut seen = BTreeSet::new();
    for page in 0..4 {
        let r = host.client.get(host.url(&format!("/api/persons?page={page}&size=2"))).send().await.unwrap();
        assert_eq!(r.headers()["x-total-count"], "7");
        let items: Vec<Value> = r.json().await.unwrap();
        assert_eq!(items.len(), if page < 3 { 2 } else { 1 });
        for item in items {
            assert!(seen.insert(item["id"].as_str().unwrap().to_string()), "pages overlap");
        }
    }

    // A credited person cannot be deleted until no comicbook embeds them.
    let (status, problem) = host.send(Method::DELETE, &location, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains(comic["id"].as_str().unwrap()), "{problem}");
    assert_eq!(host.get_json(&location).await, jack, "nothing deleted");
    let (status, _) = host.send(Method::PATCH, &comic_path, Some(&json!({ "persons": { "PENCILLER": null } }))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = host.send(Method::DELETE, &location, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = host.send(Method::GET, &location, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = host.send(Method::DELETE, &comic_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Updates are saved (2xx) while the broker hangs, and their events go out
/// in order once it is back, each once, each with its own event id; a
/// deletion that would drop an unpublished event waits (503) until it is
/// out. Runs its own broker, to hang it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_saved_while_the_broker_hangs_and_announced_after() {
    let mut servers = Servers::from_env();
    let tansu = std::env::var("RUNNEL_TANSU_BIN").expect("RUNNEL_TANSU_BIN: run the tests with scripts/test");
    let (broker, port) = support::spawn_listening("the broker", |port| {
        let mut cmd = support::broker_command(&tansu, port);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    })
    .await;
    servers.kafka_brokers = format!("127.0.0.1:{port}");
    let host = Host::start(&servers, &[]).await;

    let person = host.create("/api/persons", json!({ "firstname": "Will", "lastname": "Eisner" })).await;
    let id = person["id"].as_str().unwrap().to_string();
    let path = format!("/api/persons/{id}");
    let (status, _) = host.send(Method::PATCH, &path, Some(&json!({ "firstname": "William" }))).await;
    assert_eq!(status, StatusCode::OK, "published while the broker runs");

    let pid = broker.id().unwrap();
    support::signal(pid, "STOP");
    let names: Vec<String> = (1..=5).map(|i| format!("Bill{i}")).collect();
    for name in &names {
        let started = std::time::Instant::now();
        let (status, body) = host.send(Method::PUT, &path, Some(&json!({ "firstname": name, "lastname": "Eisner" }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "an update waited for the broker");
    }
    assert_eq!(host.get_json(&path).await["firstname"], "Bill5");
    let (status, problem) = host.send(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the events are not out yet: {problem}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    support::signal(pid, "CONT");

    let ours = |records: &[support::Record]| records.iter().filter(|r| r.key == id).count();
    let records = support::read_topic(&servers.kafka_brokers, "person", std::time::Duration::from_secs(60), |r| ours(r) >= 6).await;
    // Anything doubled would show up by now.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let records = support::read_topic(&servers.kafka_brokers, "person", std::time::Duration::from_secs(30), |r| r.len() >= records.len()).await;
    let ours: Vec<&support::Record> = records.iter().filter(|r| r.key == id).collect();
    let firstnames: Vec<String> = ours
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()["firstname"].as_str().unwrap().to_string())
        .collect();
    let mut expected = vec!["William".to_string()];
    expected.extend(names.iter().cloned());
    assert_eq!(firstnames, expected, "every update once, in order");
    let mut event_ids: Vec<&str> = ours.iter().map(|r| r.header("runnel-event-id").expect("an event id")).collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 6);

    support::eventually(std::time::Duration::from_secs(60), "the deletion once the events are out", || async {
        let (status, _) = host.send(Method::DELETE, &path, None).await;
        (status == StatusCode::NO_CONTENT).then_some(())
    })
    .await;
}

/// A database that stops answering holds no request: reads and writes of the
/// data API are answered 503 with `Retry-After` once
/// `RUNNEL_REQUEST_TIMEOUT_MS` has passed (the driver alone gives up only
/// when its heartbeats fail, and never on an operation that a database still
/// answering heartbeats leaves unanswered), routes that need no database
/// still answer, and once the database is back the same requests succeed.
/// Runs its own servers, to hang the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_end_with_503_while_the_database_hangs() {
    let own = support::OwnServers::start().await;
    let host = Host::start(&own.servers, &[("RUNNEL_REQUEST_TIMEOUT_MS", "1500")]).await;
    let person = host.create("/api/persons", json!({ "firstname": "Jack", "lastname": "Kirby" })).await;
    let path = format!("/api/persons/{}", person["id"].as_str().unwrap());

    let database = own.database.id().unwrap();
    support::signal(database, "STOP");
    let renamed = json!({ "firstname": "Jacob", "lastname": "Kirby" });
    for (method, path, body) in [
        (Method::GET, path.as_str(), None),
        (Method::PUT, path.as_str(), Some(&renamed)),
        (Method::GET, "/api/persons?size=10", None),
        (Method::POST, "/api/comicbooks", Some(&json!({ "name": "Fantastic Four" }))),
    ] {
        let started = std::time::Instant::now();
        let mut request = host.client.request(method.clone(), host.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let took = started.elapsed();
        let status = r.status();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let problem: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path} while the database hangs: {problem}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{method} {path}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("not answered within 1500 ms"), "{problem}");
        assert!(took >= std::time::Duration::from_millis(1500) && took < std::time::Duration::from_secs(10), "{method} {path} took {took:?}");
        println!("{method} {path} while the database hangs: 503 after {} ms", took.as_millis());
    }
    let (status, _) = host.send(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "a route without the database answers");
    support::signal(database, "CONT");

    let back = std::time::Instant::now();
    support::eventually(std::time::Duration::from_secs(60), "the update once the database is back", || async {
        let (status, _) = host.send(Method::PUT, &path, Some(&renamed)).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(host.get_json(&path).await["firstname"], "Jacob");
    println!("answering again {} ms after the database was", back.elapsed().as_millis());
}
