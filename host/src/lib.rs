//! Runnel: serverless-style stream functions on a WebAssembly host.
//!
//! The host serves an HTTP API for the data, produces events to Kafka when
//! the data changes, and feeds consumed records to sandboxed WebAssembly
//! components ("functions") that act through the capabilities it grants them.
//!
//! | module        | concern                                               |
//! |---------------|-------------------------------------------------------|
//! | [`config`]    | settings from the environment                         |
//! | [`domain`]    | resources, events and their validation               |
//! | [`api`]       | the HTTP API                                          |
//! | [`storage`]   | MongoDB collections                                   |
//! | [`kafka`]     | topics, the event producer, triggers                  |
//! | [`wasm`]      | the component runtime and the host capabilities       |
//! | [`functions`] | deployment manifests and the function registry        |
//! | [`mail`]      | the SMTP relay                                        |

pub mod api;
pub mod config;
pub mod domain;
pub mod functions;
pub mod kafka;
pub mod mail;
pub mod storage;
pub mod wasm;

use std::time::Duration;

use anyhow::Context;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    config::Config,
    domain::{person::PERSON_TOPIC, store::STORE_ALERTS_TOPIC},
    functions::Registry,
    kafka::{EventProducer, dead_letter_topic, trigger::Trigger},
    wasm::{Limits, Runtime, host::Capabilities},
};

/// Starts everything `config` asks for and serves until `shutdown` resolves,
/// then stops the HTTP server and the triggers in order.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let database = storage::connect(&config.mongodb_uri, &config.mongodb_database, config.connect_timeout).await?;
    let mailer = mail::Mailer::new(&config.smtp_url, &config.mail_from)?;
    let producer = EventProducer::new(&config.kafka_brokers, config.connect_timeout)?;
    let runtime = Runtime::new(Capabilities { database: database.clone(), mailer }, Limits::default())?;

    let deployments = match &config.functions_dir {
        Some(dir) => functions::load_dir(dir, &runtime, |var| std::env::var(var).ok()).await?,
        None => {
            tracing::warn!("RUNNEL_FUNCTIONS_DIR is not set: no functions are deployed");
            Vec::new()
        }
    };

    // Every topic the host produces to or a function consumes, with the
    // dead-letter topics of the latter.
    let mut topics = vec![STORE_ALERTS_TOPIC.to_string(), PERSON_TOPIC.to_string()];
    for d in &deployments {
        let topic = &d.manifest.trigger.kafka.topic;
        topics.extend([topic.clone(), dead_letter_topic(topic)]);
    }
    topics.sort();
    topics.dedup();
    kafka::ensure_topics(&config.kafka_brokers, &topics, config.connect_timeout).await?;

    // Bound before any trigger starts, so that a taken port fails start-up
    // with nothing running yet.
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("RUNNEL_HTTP_ADDR: cannot listen on {}", config.http_addr))?;

    let registry = Registry::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut triggers = JoinSet::new();
    for deployment in deployments {
        registry.add(&deployment.manifest);
        let trigger = Trigger {
            deployment,
            brokers: config.kafka_brokers.clone(),
            producer: producer.clone(),
            registry: registry.clone(),
        };
        triggers.spawn(trigger.run(stop_rx.clone()));
    }

    let state = api::AppState { database, producer, registry };
    let app = api::router(state, config.max_body_bytes);
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let mut http_stop = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drained = async {
        while triggers.join_next().await.is_some() {}
        let _ = server.await;
    };
    // Long enough for a call in progress to end within its own deadline.
    let grace = Limits::default().timeout + Duration::from_secs(10);
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("shutdown took longer than {grace:?}; exiting anyway");
    }
    Ok(())
}
