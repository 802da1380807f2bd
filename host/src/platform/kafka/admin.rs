//! Creates the topics Runnel uses, before anything produces or consumes.

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

/// Makes sure every topic in `topics` exists (one partition, the broker's
/// replication default). Fails, naming `RUNNEL_KAFKA_BROKERS`, when no broker
/// answers within `timeout`.
pub async fn ensure_topics(brokers: &str, topics: &[String], timeout: Duration) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(brokers)
        .create()
        .with_context(|| format!("RUNNEL_KAFKA_BROKERS: cannot use '{brokers}'"))?;

    // Metadata is the cheapest way to learn whether a broker answers at all.
    let admin = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(None, timeout).map(|_| admin)
    })
    .await?
    .with_context(|| format!("RUNNEL_KAFKA_BROKERS: no Kafka broker answers at '{brokers}'"))?;

    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("RUNNEL_KAFKA_BROKERS: cannot create topics at '{brokers}'"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("cannot create topic '{topic}': {code}"),
        }
    }
    Ok(())
}
