//! The store-alert flow end to end, shared by the tests that run it with the
//! function in each language: create a store, update it to CLOSED; within a
//! bounded wait exactly one StoreAlert with the right fields exists and
//! exactly one mail with the right To, Subject and body arrived. A malformed
//! record on the topic is dead-lettered without stopping the function.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Host, Servers, eventually, mails_with_subject};

pub const DISTRIBUTION_LIST: &str = "ops@example.com, owner@example.com";

pub async fn create_store(host: &Host, name: &str) -> Value {
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

pub async fn alerts_named(host: &Host, name: &str) -> Vec<Value> {
    let r = host.client.get(host.url("/api/store-alerts?size=1000")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let all: Vec<Value> = r.json().await.unwrap();
    all.into_iter().filter(|a| a["storeName"] == name).collect()
}

/// Runs the flow against `host`, whose `store-alert-to-email` (in whatever
/// language) reads `store-alerts-topic` with ALERT_DISTRIBUTION_LIST set to
/// [`DISTRIBUTION_LIST`]. Returns how long the second PUT took to its mail.
pub async fn store_alert_flow(servers: &Servers, host: &Host) -> Duration {
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
    let producer = runnel::platform::kafka::EventProducer::new(&runnel::platform::kafka::Cluster::new(&servers.kafka_brokers, Vec::new()), Duration::from_secs(10), false).unwrap();
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
    let next_put_to_mail = put_at.elapsed();
    println!("next PUT to mail received (group joined): {} ms", next_put_to_mail.as_millis());
    // The mail is out before the function returns and its record is
    // counted: wait for the count.
    eventually(Duration::from_secs(10), "the second record counted as handled", || async {
        let function = host.get_json("/admin/functions/store-alert-to-email").await;
        (function["running"]["counters"]["handled"].as_u64().unwrap_or(0) >= 2).then_some(())
    })
    .await;
    let function = host.get_json("/admin/functions/store-alert-to-email").await;
    assert_eq!(function["state"], "running", "{function}");
    assert_eq!(function["running"]["topic"], "store-alerts-topic", "{function}");
    assert_eq!(function["running"]["group"], "store-alerts", "{function}");
    assert_eq!(function["running"]["counters"]["deadLettered"], 1, "{function}");
    assert!(function["running"]["counters"]["handled"].as_u64().unwrap() >= 2, "{function}");
    next_put_to_mail
}
