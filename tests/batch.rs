//! `handle-batch` through the runtime, against the real database: several
//! records in one call of one instance, each record's capability calls
//! journaled as its own (so a record delivered again alone gets its own
//! earlier answers), and the first record not handled named with its error.

mod support;

use std::{sync::Arc, time::Duration};

use runnel::platform::{
    capabilities::{ManifestGrants, Services, mail::Mail},
    journal::{Journal, RecordKey},
    runtime::{Limits, Message, Outcome, Runtime},
};
use support::Servers;

const FUNCTION: &str = "recorder-batch";

fn message(offset: i64, payload: &str) -> Message {
    let mut message = Message::with_payload("batch-topic", payload);
    message.offset = offset;
    message.key = Some(format!("k{offset}").into_bytes());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_journals_each_record_as_its_own_and_names_the_first_it_did_not_handle() {
    let servers = Servers::from_env();
    let database_name = format!("batch-{}", uuid::Uuid::new_v4().simple());
    let collection = "recorded";
    let client = mongodb::Client::with_uri_str(&servers.mongodb_uri).await.unwrap();
    let database = client.database(&database_name);
    let mail = Mail::new(&servers.smtp_url, "runnel@example.com").unwrap();
    let runtime = Runtime::new(Services::new(database.clone(), mail, Duration::from_secs(5)), Limits::default(), None).unwrap();
    let journal = Journal::open(&database, Duration::from_secs(5)).await.unwrap();
    let grants: ManifestGrants = toml::from_str(&format!(
        "[documents]\nwrite = ['{collection}']\n[config.collection]\nvalue = '{collection}'\n"
    ))
    .unwrap();
    let grants = runtime.services().resolve(FUNCTION, &grants, &|_| None).unwrap();
    let recorder = runtime.load(FUNCTION, &support::fixture("recorder"), grants).await.unwrap();
    assert!(recorder.batches(), "a function built with the Rust SDK exports handle-batch");

    let name: Arc<str> = Arc::from(FUNCTION);
    let key = |m: &Message| RecordKey::new(m.topic.as_str(), m.partition, m.offset, None);
    let calls_of = |m: &Message| journal.calls(name.clone(), key(m));

    // Records 0..3 handled, 3 refused, 4 never reached.
    let batch: Vec<Message> =
        vec![message(0, "a"), message(1, "b"), message(2, "c"), message(3, "recorder:bad-input"), message(4, "e")];
    let calls: Vec<_> = batch.iter().map(calls_of).collect();
    let answer = recorder.run_batch(&batch, &calls).await;
    assert_eq!(answer.handled, 3, "{answer:?}");
    assert!(matches!(&answer.outcome, Outcome::Declined(runnel::platform::runtime::HandlerError::BadInput(r)) if r == "recorder:bad-input"), "{answer:?}");
    for (i, c) in calls.iter().enumerate() {
        let stats = c.stats().await;
        assert_eq!(stats.journaled, u32::from(i < 3), "record {i}: its own insert, journaled under it: {stats:?}");
        assert_eq!(stats.replayed, 0);
    }
    let documents = support::documents(&servers.mongodb_uri, &database_name, collection).await;
    let mut offsets: Vec<i64> = documents.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2]);

    // Each record delivered again alone: those handled get their insert
    // answered from their own journal (no second document); record 4,
    // never reached, is inserted now.
    for (i, m) in batch.iter().enumerate().filter(|(i, _)| *i != 3) {
        let calls = calls_of(m);
        let outcome = recorder.run(m, &calls).await.outcome;
        assert!(matches!(outcome, Outcome::Handled), "record {i}: {outcome:?}");
        let stats = calls.stats().await;
        let expected = if i < 3 { (1, 0) } else { (0, 1) };
        assert_eq!((stats.replayed, stats.journaled), expected, "record {i}: {stats:?}");
    }
    let documents = support::documents(&servers.mongodb_uri, &database_name, collection).await;
    let mut offsets: Vec<i64> = documents.iter().map(|d| d["offset"].as_i64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2, 4], "every record recorded once");

    // The same batch again, in another composition: answered from the
    // journals, nothing written twice.
    let again: Vec<Message> = vec![message(2, "c"), message(4, "e"), message(0, "a")];
    let calls: Vec<_> = again.iter().map(calls_of).collect();
    let answer = recorder.run_batch(&again, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 3, "{answer:?}");
    for c in &calls {
        assert_eq!(c.stats().await.replayed, 1);
    }
    assert_eq!(support::documents(&servers.mongodb_uri, &database_name, collection).await.len(), 4);

    // A reused instance takes batches too, and counts their records.
    let reused = recorder.clone().reusing(4, Duration::from_secs(60));
    let more: Vec<Message> = (10..13).map(|o| message(o, "x")).collect();
    let calls: Vec<_> = more.iter().map(calls_of).collect();
    let answer = reused.run_batch(&more, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 3, "{answer:?}");
    assert_eq!(runtime.usage().0, 1, "the instance that handled 3 of its 4 is kept");
    let calls: Vec<_> = more.iter().map(calls_of).collect();
    let answer = reused.run_batch(&more, &calls).await;
    assert!(matches!(answer.outcome, Outcome::Handled), "{answer:?}");
    assert_eq!(runtime.usage().0, 0, "past max-messages it is dropped");

    // A batch and its journals that do not match, and an empty batch.
    let answer = recorder.run_batch(&batch, &[]).await;
    assert!(matches!(answer.outcome, Outcome::Failed(_)) && answer.handled == 0, "{answer:?}");
    let answer = recorder.run_batch(&[], &[]).await;
    assert!(matches!(answer.outcome, Outcome::Handled) && answer.handled == 0, "{answer:?}");
    database.drop().await.unwrap();
}
