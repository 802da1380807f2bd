//! Person → comicbook propagation on real servers: an update of a person
//! through the API reaches every comicbook that embeds them, in every role,
//! through the `person` topic and the `person-to-comicbook` component, and
//! nothing else changes. Also measures the propagation time over 100 updates.

mod support;

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{percentile, Host, Servers, eventually};

fn env(servers: &Servers) -> Vec<(&'static str, String)> {
    vec![
        ("RUNNEL_FUNCTIONS_DIR", servers.functions_dir.display().to_string()),
        ("ALERT_DISTRIBUTION_LIST", "ops@example.com".to_string()),
    ]
}

fn embedded(person: &Value) -> Value {
    json!({ "id": person["id"], "firstname": person["firstname"], "lastname": person["lastname"] })
}

/// The comicbook at `path` once `check` holds for it.
async fn comic_when(host: &Host, path: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    eventually(limit, path, || async {
        let c = host.get_json(path).await;
        check(&c).then_some(c)
    })
    .await
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_update_reaches_every_embedding_and_nothing_else() {
    let servers = Servers::from_env();
    let env = env(&servers);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = Host::start(&servers, &env).await;

    let p = host.create("/api/persons", json!({ "firstname": "Steve", "lastname": "Ditko" })).await;
    let q = host.create("/api/persons", json!({ "firstname": "Stan", "lastname": "Lee" })).await;
    // A: p under two roles; B: p under one; C: only q.
    let a = host
        .create("/api/comicbooks", json!({ "name": "A", "persons": { "PENCILLER": [embedded(&p)], "INKER": [embedded(&p), embedded(&q)], "WRITER": [embedded(&q)] } }))
        .await;
    let b = host.create("/api/comicbooks", json!({ "name": "B", "persons": { "COVER_ARTIST": [embedded(&p)], "EDITOR": [embedded(&q)] } })).await;
    let c = host.create("/api/comicbooks", json!({ "name": "C", "persons": { "WRITER": [embedded(&q)] } })).await;
    let path = |comic: &Value| format!("/api/comicbooks/{}", comic["id"].as_str().unwrap());
    let p_path = format!("/api/persons/{}", p["id"].as_str().unwrap());

    let renamed = json!({ "id": p["id"], "firstname": "Stephen", "lastname": "J. Ditko" });
    let started = Instant::now();
    let (status, answer) = host.send(Method::PUT, &p_path, Some(&renamed)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, renamed);

    let expect = |comic: &Value| {
        let text = comic.to_string().replace("\"Steve\"", "\"Stephen\"").replace("\"Ditko\"", "\"J. Ditko\"");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let (want_a, want_b) = (expect(&a), expect(&b));
    assert_ne!(want_a, a);
    let limit = Duration::from_secs(30);
    let got_a = comic_when(&host, &path(&a), limit, |x| *x == want_a).await;
    comic_when(&host, &path(&b), limit, |x| *x == want_b).await;
    println!("first PUT /api/persons/{{id}} to all comicbooks updated (includes the group's first join): {} ms", started.elapsed().as_millis());
    assert_eq!(got_a["persons"]["INKER"][1], embedded(&q), "the other person is untouched");
    assert_eq!(host.get_json(&path(&c)).await, c, "a comicbook without the person is untouched");
    assert_eq!(host.get_json(&format!("/api/persons/{}", q["id"].as_str().unwrap())).await, q);

    // The documents keep the original services' shape.
    let client = mongodb::Client::with_uri_str(&servers.mongodb_uri).await.unwrap();
    let raw: Document = client
        .database(&host.database)
        .collection::<Document>("comicbooks")
        .find_one(doc! { "_id": a["id"].as_str().unwrap() })
        .await
        .unwrap()
        .unwrap();
    let inker = raw.get_document("persons").unwrap().get_array("INKER").unwrap();
    let first = inker[0].as_document().unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["_id", "firstname", "lastname"]);
    assert_eq!(first.get_str("_id").unwrap(), p["id"].as_str().unwrap());
    assert_eq!(raw.keys().collect::<Vec<_>>(), ["_id", "name", "persons"]);

    // The same event again changes nothing more.
    let producer = runnel::platform::kafka::EventProducer::new(&runnel::platform::kafka::Cluster::new(&servers.kafka_brokers, Vec::new()), Duration::from_secs(10), false).unwrap();
    producer
        .publish(runnel::platform::kafka::Event::json("person", p["id"].as_str().unwrap(), &renamed))
        .await
        .unwrap();
    // A marker update of q after the replay: once it shows, the replay was handled.
    let q_path = format!("/api/persons/{}", q["id"].as_str().unwrap());
    let (status, _) = host.send(Method::PATCH, &q_path, Some(&json!({ "lastname": "Lieber" }))).await;
    assert_eq!(status, StatusCode::OK);
    comic_when(&host, &path(&c), limit, |x| x["persons"]["WRITER"][0]["lastname"] == "Lieber").await;
    let a_now = host.get_json(&path(&a)).await;
    assert_eq!(a_now["persons"]["PENCILLER"], want_a["persons"]["PENCILLER"]);
    assert_eq!(a_now["persons"]["INKER"][0], want_a["persons"]["INKER"][0]);
    assert_eq!(host.get_json(&path(&b)).await["persons"]["COVER_ARTIST"], want_b["persons"]["COVER_ARTIST"]);
    let all: Vec<Document> = client
        .database(&host.database)
        .collection::<Document>("comicbooks")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);

    // Propagation time over 100 updates (PATCH and PUT alternate).
    let mut times = Vec::with_capacity(100);
    for i in 0..100 {
        let name = format!("Steve-{i}");
        let started = Instant::now();
        let (status, _) = if i % 2 == 0 {
            host.send(Method::PATCH, &p_path, Some(&json!({ "firstname": name }))).await
        } else {
            host.send(Method::PUT, &p_path, Some(&json!({ "firstname": name, "lastname": "J. Ditko" }))).await
        };
        assert_eq!(status, StatusCode::OK);
        let shows = |x: &Value| x.to_string().contains(&format!("\"{name}\""));
        comic_when(&host, &path(&a), limit, shows).await;
        comic_when(&host, &path(&b), limit, shows).await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "propagation PUT/PATCH /api/persons/{{id}} to all comicbooks updated over {} updates: p50 {} ms, p99 {} ms, max {} ms",
        times.len(),
        percentile(&times, 50.0).as_millis(),
        percentile(&times, 99.0).as_millis(),
        times.last().unwrap().as_millis()
    );
    let f = host.get_json("/admin/functions/person-to-comicbook").await;
    assert_eq!(f["state"], "running", "{f}");
    assert_eq!(f["running"]["counters"]["deadLettered"], 0, "{f}");
    assert!(f["running"]["counters"]["handled"].as_u64().unwrap() >= 100, "{f}");
}
