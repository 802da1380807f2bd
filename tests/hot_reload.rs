//! Hot reload of RUNNEL_FUNCTIONS_DIR: a changed manifest or component
//! there is live at once, a half-written one is never loaded, and records
//! keep flowing, each handled once. Prints the latency from the file written
//! to the first record handled by the new version, over 20 reloads.

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::{percentile, Host, Servers, documents, eventually, fixture, recorder_manifest};

const RELOADS: usize = 20;


/// The labels of the documents recorded so far.
async fn labels(servers: &Servers, database: &str) -> BTreeMap<String, usize> {
    let mut labels = BTreeMap::new();
    for d in documents(&servers.mongodb_uri, database, "records").await {
        *labels.entry(d["label"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_live_at_once_and_a_half_written_one_never_loads() {
    let servers = Servers::from_env();
    let dir = std::env::temp_dir().join(format!("runnel-hot-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (name, topic, group) = (format!("hot-{id}"), format!("hot-{id}"), format!("hot-{id}"));
    let manifest = |label: &str| recorder_manifest(&name, &topic, &group, "records", label);
    let recorder = fixture("recorder");
    std::fs::write(dir.join(format!("{name}.toml")), manifest("L0")).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), &recorder).unwrap();
    let dir_text = dir.display().to_string();
    let host = Host::start(&servers, &[("RUNNEL_FUNCTIONS_DIR", &dir_text)]).await;

    // A steady stream of records, one every 10 ms.
    let running = Arc::new(AtomicBool::new(true));
    let producing = {
        let (brokers, topic, running) = (servers.kafka_brokers.clone(), topic.clone(), running.clone());
        tokio::spawn(async move {
            let producer = runnel::platform::kafka::EventProducer::new(&runnel::platform::kafka::Cluster::new(&brokers, Vec::new()), Duration::from_secs(10), false).unwrap();
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                let key = format!("k{n}");
                producer
                    .publish(runnel::platform::kafka::Event { topic: &topic, key: Some(key.as_bytes()), payload: b"{}".to_vec(), headers: vec![] })
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    eventually(Duration::from_secs(30), "L0 handling records", || async {
        labels(&servers, &host.database).await.contains_key("L0").then_some(())
    })
    .await;

    let mut latencies = Vec::new();
    for round in 1..=RELOADS {
        let label = format!("L{round}");
        let written = Instant::now();
        std::fs::write(dir.join(format!("{name}.toml")), manifest(&label)).unwrap();
        let latency = eventually(Duration::from_secs(30), &format!("{label} handling records"), || async {
            labels(&servers, &host.database).await.contains_key(&label).then(|| written.elapsed())
        })
        .await;
        latencies.push(latency);
    }

    // A component written in two halves, the second a second later: the
    // first half is refused as it is not a component, the version running
    // stays, and the whole file goes live once it is there.
    let last = format!("L{RELOADS}");
    // The half component first, so that the new manifest never meets the
    // old, complete component.
    let half = recorder.len() / 2;
    std::fs::write(dir.join(format!("{name}.wasm")), &recorder[..half]).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), manifest("half")).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = labels(&servers, &host.database).await;
    eventually(Duration::from_secs(30), &format!("{last} still serving"), || async {
        let after = labels(&servers, &host.database).await;
        assert!(!after.contains_key("half"), "a half-written component was loaded: {after:?}");
        (after[&last] > before[&last]).then_some(())
    })
    .await;
    let f = host.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(f["state"], "running", "{f}");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(dir.join(format!("{name}.wasm"))).unwrap();
        file.write_all(&recorder[half..]).unwrap();
    }
    eventually(Duration::from_secs(30), "the completed component live", || async {
        labels(&servers, &host.database).await.contains_key("half").then_some(())
    })
    .await;

    running.store(false, Ordering::Relaxed);
    let produced = producing.await.unwrap();
    eventually(Duration::from_secs(180), "every record handled", || async {
        let n = documents(&servers.mongodb_uri, &host.database, "records").await.len() as u64;
        assert!(n <= produced, "{n} documents for {produced} records: some handled twice");
        (n == produced).then_some(())
    })
    .await;
    let f = host.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(f["running"]["counters"]["revocations"], 0, "no rebalance: {f}");

    latencies.sort();
    println!(
        "hot reload, file written to first record handled by the new version, over {RELOADS} reloads: p50 {} ms, p99 {} ms, max {} ms ({produced} records, each handled once)",
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 99.0).as_millis(),
        latencies.last().unwrap().as_millis()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
