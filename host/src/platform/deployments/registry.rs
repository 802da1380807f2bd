//! The deployments running on this host: one supervised handle per
//! function, which can be started, swapped and stopped.
//!
//! - **swap**: a new version whose trigger (topic, group) is unchanged is
//!   handed to the running trigger through a `watch` channel; the consumer
//!   keeps its group membership and position, so nothing is skipped, run
//!   twice, or rebalanced;
//! - **restart**: a changed trigger, or a trigger that has ended (the
//!   function gave up), stops the old consumer (it commits and leaves its
//!   group) and starts a new one;
//! - **stop**: undeploy and shutdown.
//!
//! Each trigger runs in a task watched by a supervisor task: a trigger that
//! ends or crashes is noticed and its state shows why.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use super::{CounterSnapshot, Deployment, FunctionState, Incident, Manifest, PartitionLag, Status};
use crate::platform::{
    journal::Journal,
    metrics::Metrics,
    kafka::{
        Cluster, EventProducer, Topics, dead_letter_topic,
        replay::{self, ReplayFrom, ReplayReport},
        trigger::Trigger,
    },
};

/// What triggers need from the host.
#[derive(Clone)]
pub struct TriggerSettings {
    pub cluster: Cluster,
    pub producer: EventProducer,
    /// Creates each function's topic and dead-letter topic.
    pub topics: Topics,
    /// Where functions' capability calls are journaled.
    pub journal: Journal,
    /// Where each function version's counters go.
    pub metrics: Metrics,
    /// How long a function's call may run (a revocation waits for it).
    pub call_deadline: Duration,
    /// How long to wait for the broker when creating topics.
    pub timeout: Duration,
    /// How long a stopping trigger may take to finish its call in flight.
    pub stop_grace: Duration,
}

/// The first pause before a crashed trigger is started again; it doubles
/// while the trigger keeps crashing, up to the maximum, and starts over once
/// a trigger ran for [`CRASH_RESET`].
const CRASH_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_CRASH_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);
const CRASH_RESET: std::time::Duration = std::time::Duration::from_secs(300);

/// What changed on [`Registry::activate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Activation {
    /// Not running before: a trigger was started.
    Started,
    /// Swapped into the running trigger.
    Swapped,
    /// The trigger changed or had ended: a new one was started.
    Restarted,
    /// This version was already the active one.
    Unchanged,
}

/// One function on this host, as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    /// The SHA-256 of the running version's component and manifest.
    pub version: String,
    pub topic: String,
    pub group: String,
    #[serde(flatten)]
    pub state: FunctionState,
    pub counters: CounterSnapshot,
    pub last_error: Option<String>,
    /// Consumer lag of the partitions this host owns.
    pub lag: Vec<PartitionLag>,
    /// The latest errors and dead letters, newest first.
    pub recent: Vec<Incident>,
}

struct Slot {
    current: Arc<Deployment>,
    deployment_tx: watch::Sender<Arc<Deployment>>,
    stop_tx: watch::Sender<bool>,
    /// The supervisor: ends when the trigger has ended.
    supervisor: JoinHandle<()>,
    status: Arc<Status>,
}

impl Slot {
    fn trigger_key(&self) -> (&str, &str) {
        (&self.current.manifest.trigger.kafka.topic, self.current.manifest.group())
    }
}

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TriggerSettings,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Serializes activations and stops (which wait for triggers); true
    /// once the registry is shut down, when nothing starts any more.
    ops: tokio::sync::Mutex<bool>,
}

impl Registry {
    pub fn new(settings: TriggerSettings) -> Self {
        Registry { inner: Arc::new(Inner { settings, slots: Mutex::default(), ops: tokio::sync::Mutex::new(false) }) }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `deployment` the running version of its function.
    pub async fn activate(&self, deployment: Deployment) -> anyhow::Result<Activation> {
        let closed = self.inner.ops.lock().await;
        if *closed {
            anyhow::bail!("the host is shutting down");
        }
        let deployment = Arc::new(deployment);
        let name = deployment.manifest.name.clone();
        let key = (deployment.manifest.trigger.kafka.topic.as_str(), deployment.manifest.group());
        let previous_status = {
            let mut slots = self.slots();
            match slots.get_mut(&name) {
                Some(slot) if slot.current.version == deployment.version && !slot.supervisor.is_finished() => {
                    return Ok(Activation::Unchanged);
                }
                Some(slot) if slot.trigger_key() == key && !slot.supervisor.is_finished() => {
                    slot.current = deployment.clone();
                    slot.deployment_tx.send_replace(deployment.clone());
                    tracing::info!(function = %name, version = %deployment.version, "swapped in place");
                    return Ok(Activation::Swapped);
                }
                Some(_) => slots.remove(&name),
                None => None,
            }
        };
        let restarted = previous_status.is_some();
        let status = match previous_status {
            Some(slot) => {
                let status = slot.status.clone();
                self.stop_slot(slot).await;
                status
            }
            None => Arc::new(Status::new(&name)),
        };
        self.start(deployment, status).await?;
        Ok(if restarted { Activation::Restarted } else { Activation::Started })
    }

    /// A function's topic and its dead-letter topic.
    fn topics_of(deployment: &Deployment) -> [String; 2] {
        let topic = &deployment.manifest.trigger.kafka.topic;
        [topic.clone(), dead_letter_topic(topic)]
    }

    /// Creates the topics of all of `deployments` in one request, before
    /// they are activated one after the other.
    pub async fn ensure_topics<'a>(&self, deployments: impl IntoIterator<Item = &'a Deployment>) -> anyhow::Result<()> {
        let topics: Vec<String> = deployments.into_iter().flat_map(Self::topics_of).collect();
        self.inner.settings.topics.ensure(&topics).await
    }

    async fn start(&self, deployment: Arc<Deployment>, status: Arc<Status>) -> anyhow::Result<()> {
        let settings = &self.inner.settings;
        let name = deployment.manifest.name.clone();
        let topic = deployment.manifest.trigger.kafka.topic.clone();
        settings
            .topics
            .ensure(&Self::topics_of(&deployment))
            .await
            .with_context(|| format!("cannot create the topics of '{name}'"))?;
        let generation = status.begin();
        let (deployment_tx, deployment_rx) = watch::channel(deployment.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let make_trigger = {
            let (group, cluster, producer, journal, metrics) = (
                deployment.manifest.group().to_string(),
                settings.cluster.clone(),
                settings.producer.clone(),
                settings.journal.clone(),
                settings.metrics.clone(),
            );
            let (status, call_deadline) = (status.clone(), settings.call_deadline);
            move || Trigger {
                topic: topic.clone(),
                group: group.clone(),
                cluster: cluster.clone(),
                producer: producer.clone(),
                journal: journal.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                deployment: deployment_rx.clone(),
                stop: stop_rx.clone(),
                call_deadline,
            }
        };
        let running = make_trigger().start().with_context(|| format!("cannot start the consumer of '{name}'"))?;
        let watched = status.clone();
        let supervisor = tokio::spawn(async move {
            // A trigger that crashes (a panic: a bug) is started again, after
            // a pause that grows while it keeps crashing; its state says so
            // meanwhile. A trigger that ends (stopped, or the function gave
            // up) is not.
            let mut task = tokio::spawn(running);
            let mut pause = CRASH_PAUSE;
            let state = loop {
                let started = std::time::Instant::now();
                let state = match (&mut task).await {
                    Ok(state) => state,
                    Err(e) if e.is_panic() => {
                        let reason = panic_text(e.into_panic());
                        tracing::error!(function = watched.name(), "the trigger crashed, restarting it in {pause:?}: {reason}");
                        watched.set_state_of(
                            generation,
                            FunctionState::Failed { reason: format!("the trigger crashed (restarting): {reason}") },
                        );
                        if started.elapsed() > CRASH_RESET {
                            pause = CRASH_PAUSE;
                        }
                        let mut stop = make_trigger().stop;
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => break FunctionState::Stopped,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(MAX_CRASH_PAUSE);
                        match make_trigger().start() {
                            Ok(running) => {
                                task = tokio::spawn(running);
                                continue;
                            }
                            Err(e) => break FunctionState::Failed { reason: format!("cannot restart the consumer: {e:#}") },
                        }
                    }
                    Err(_) => FunctionState::Stopped,
                };
                break state;
            };
            watched.set_state_of(generation, state);
        });
        tracing::info!(function = %name, version = %deployment.version, "trigger started");
        self.slots().insert(name, Slot { current: deployment, deployment_tx, stop_tx, supervisor, status });
        Ok(())
    }

    async fn stop_slot(&self, slot: Slot) {
        let _ = slot.stop_tx.send(true);
        let grace = self.inner.settings.stop_grace;
        if tokio::time::timeout(grace, slot.supervisor).await.is_err() {
            tracing::warn!(function = slot.status.name(), "the trigger did not stop within {grace:?}");
        }
    }

    /// Stops `name`'s trigger (its consumer commits and leaves the group).
    /// False when it was not deployed here.
    pub async fn stop(&self, name: &str) -> bool {
        let _ops = self.inner.ops.lock().await;
        let Some(slot) = self.slots().remove(name) else { return false };
        self.stop_slot(slot).await;
        tracing::info!(function = %name, "undeployed");
        true
    }

    /// Stops every trigger, all at once; nothing starts afterwards.
    pub async fn shutdown(&self) {
        let mut closed = self.inner.ops.lock().await;
        *closed = true;
        let slots = std::mem::take(&mut *self.slots());
        futures::future::join_all(slots.into_values().map(|slot| self.stop_slot(slot))).await;
    }

    /// The version running here, if any (a trigger that has ended, e.g.
    /// because the function gave up, runs nothing).
    pub fn running_version(&self, name: &str) -> Option<String> {
        self.slots().get(name).filter(|s| !s.supervisor.is_finished()).map(|s| s.current.version.clone())
    }

    /// Replays records through `name`'s running version (see
    /// [`crate::platform::kafka::replay`]); `None` when it runs nothing here.
    pub async fn replay(&self, name: &str, from: ReplayFrom) -> Option<anyhow::Result<ReplayReport>> {
        let deployment = self.slots().get(name).filter(|s| !s.supervisor.is_finished()).map(|s| s.current.clone())?;
        let settings = &self.inner.settings;
        Some(replay::replay(&deployment, &settings.cluster, &settings.journal, from, settings.timeout).await)
    }

    /// Moves the group offsets of a function that runs nowhere (see
    /// [`replay::move_offsets`]).
    pub async fn move_offsets(&self, manifest: &Manifest, from: ReplayFrom) -> anyhow::Result<ReplayReport> {
        let settings = &self.inner.settings;
        replay::move_offsets(manifest, &settings.cluster, from, settings.timeout).await
    }

    pub fn status(&self, name: &str) -> Option<FunctionStatus> {
        self.slots().get(name).map(snapshot)
    }

    /// Every function running (or trying to) on this host, by name.
    pub fn statuses(&self) -> Vec<FunctionStatus> {
        let mut all: Vec<FunctionStatus> = self.slots().values().map(snapshot).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// (function, topic, partition, lag) of every partition consumed here.
    pub fn lag(&self) -> Vec<(String, String, i32, i64)> {
        let slots = self.slots();
        let mut lag = Vec::new();
        for (name, slot) in slots.iter().filter(|(_, s)| !s.supervisor.is_finished()) {
            let topic = &slot.current.manifest.trigger.kafka.topic;
            lag.extend(slot.status.lag().into_iter().map(|(p, n)| (name.clone(), topic.clone(), p, n)));
        }
        lag
    }

}

fn snapshot(slot: &Slot) -> FunctionStatus {
    let manifest = &slot.current.manifest;
    FunctionStatus {
        name: manifest.name.clone(),
        version: slot.current.version.clone(),
        topic: manifest.trigger.kafka.topic.clone(),
        group: manifest.group().to_string(),
        state: slot.status.state(),
        counters: slot.status.counters(),
        last_error: slot.status.last_error(),
        lag: slot.status.lag().into_iter().map(|(partition, lag)| PartitionLag { partition, lag }).collect(),
        recent: slot.status.incidents(),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
