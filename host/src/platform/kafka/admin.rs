//! Creates the topics Runnel uses, before anything produces or consumes.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

/// The host's topic creator: one admin client, and the topics known to
/// exist, so that each is asked for once. Cheap to clone.
#[derive(Clone)]
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    cluster: super::Cluster,
    partitions: i32,
    timeout: Duration,
    known: Arc<Mutex<HashSet<String>>>,
}

impl Topics {
    /// Connects to `cluster`; topics it creates get `partitions` partitions
    /// (and the broker's replication default). Fails, naming the settings
    /// in effect, when no broker answers within `timeout`.
    pub async fn connect(cluster: &super::Cluster, partitions: i32, timeout: Duration) -> anyhow::Result<Self> {
        let admin: AdminClient<DefaultClientContext> = cluster.create(cluster.config())?;
        let topics = Topics { admin: Arc::new(admin), cluster: cluster.clone(), partitions, timeout, known: Arc::default() };
        topics.ping(timeout).await.with_context(|| format!("no Kafka broker answers with {}", cluster.settings()))?;
        Ok(topics)
    }

    /// Asks the brokers for the cluster's metadata: the cheapest way to
    /// learn whether one answers at all (and accepts these settings).
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout).map(drop)).await??;
        Ok(())
    }

    /// Makes sure every topic in `topics` exists, in one request for all
    /// those not known to exist yet. A topic that exists is left as it is,
    /// whatever its partitions.
    pub async fn ensure(&self, topics: &[String]) -> anyhow::Result<()> {
        let missing: Vec<&String> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let mut missing: Vec<&String> = topics.iter().filter(|t| !known.contains(*t)).collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic> =
            missing.iter().map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(-1))).collect();
        let options = AdminOptions::new().request_timeout(Some(self.timeout)).operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics(&new_topics, &options)
            .await
            .with_context(|| format!("cannot create topics with {}", self.cluster.settings()))?;
        for result in results {
            let topic = match result {
                Ok(topic) => {
                    tracing::info!(topic, partitions = self.partitions, "created topic");
                    topic
                }
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => topic,
                Err((topic, code)) => bail!("cannot create topic '{topic}': {code}"),
            };
            self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(topic);
        }
        Ok(())
    }
}
