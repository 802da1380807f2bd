//! How each deployment is doing: its state and counters, updated by its
//! trigger and read by the admin API.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// The state of a function's trigger on this host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum FunctionState {
    Starting,
    Running,
    /// The function gave up, could not start, or its trigger crashed; see
    /// `reason`. Deploying a version makes it run again.
    Failed { reason: String },
    Stopped,
}

impl FunctionState {
    /// The state's name, as the admin API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            FunctionState::Starting => "starting",
            FunctionState::Running => "running",
            FunctionState::Failed { .. } => "failed",
            FunctionState::Stopped => "stopped",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            FunctionState::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Counts kept per function on this host (since the host started).
#[derive(Debug, Default)]
pub struct Counters {
    pub handled: AtomicU64,
    /// Of those, the ones handled in a call of `handle-batch`.
    pub batched: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Calls that trapped or timed out.
    pub failed: AtomicU64,
    /// Records the trigger's filter skipped.
    pub filtered: AtomicU64,
    /// Calls run again (retry-later, or after a failure).
    pub retried: AtomicU64,
    /// Of those, the ones run again because a service was unavailable.
    pub waited_for_service: AtomicU64,
    /// Records whose earlier delivery's calls were answered from the journal.
    pub replayed: AtomicU64,
    /// Partition assignments and revocations the consumer saw.
    pub assignments: AtomicU64,
    pub revocations: AtomicU64,
}

/// Incidents kept per function (the newest).
const INCIDENTS_KEPT: usize = 20;

/// Something that went wrong with one record: a failure, a bad input, a
/// dead letter, giving up.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub at: chrono::DateTime<chrono::Utc>,
    /// `trap`, `bad-input`, `give-up`, `not-started` or `dead-letter`.
    pub kind: String,
    pub partition: i32,
    pub offset: i64,
    pub detail: String,
}

/// A partition's consumer lag.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    pub partition: i32,
    pub lag: i64,
}

#[derive(Debug)]
pub struct Status {
    name: String,
    /// Which start of the trigger owns the state: a trigger that outlived
    /// its stop cannot overwrite the state of the one that replaced it.
    generation: AtomicU64,
    state: Mutex<FunctionState>,
    last_error: Mutex<Option<String>>,
    pub counters: Counters,
    /// Consumer lag by partition, as the trigger last saw it.
    lag: Mutex<Vec<(i32, i64)>>,
    /// The latest incidents, newest first.
    incidents: Mutex<VecDeque<Incident>>,
}

/// The counters as the admin API shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CounterSnapshot {
    pub handled: u64,
    pub batched: u64,
    pub dead_lettered: u64,
    pub failed: u64,
    pub filtered: u64,
    pub retried: u64,
    pub waited_for_service: u64,
    pub replayed: u64,
    pub assignments: u64,
    pub revocations: u64,
}

impl Status {
    pub fn new(name: &str) -> Self {
        Status {
            name: name.to_string(),
            generation: AtomicU64::new(0),
            state: Mutex::new(FunctionState::Starting),
            last_error: Mutex::new(None),
            counters: Counters::default(),
            lag: Mutex::new(Vec::new()),
            incidents: Mutex::new(VecDeque::new()),
        }
    }

    /// Notes an incident (the last [`INCIDENTS_KEPT`] are kept).
    pub fn note(&self, kind: &str, partition: i32, offset: i64, detail: &str) {
        let mut incidents = self.incidents.lock().unwrap_or_else(|e| e.into_inner());
        incidents.push_front(Incident {
            at: chrono::Utc::now(),
            kind: kind.to_string(),
            partition,
            offset,
            detail: detail.chars().take(500).collect(),
        });
        incidents.truncate(INCIDENTS_KEPT);
    }

    /// The latest incidents, newest first.
    pub fn incidents(&self) -> Vec<Incident> {
        self.incidents.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> FunctionState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new start of the trigger: from now on only it sets the state.
    pub fn begin(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.set_state(FunctionState::Starting);
        generation
    }

    /// Sets the state if `generation` is still the current start.
    pub fn set_state_of(&self, generation: u64, state: FunctionState) {
        if self.generation.load(Ordering::SeqCst) == generation {
            self.set_state(state);
        }
    }

    pub fn set_state(&self, state: FunctionState) {
        if let FunctionState::Failed { reason } = &state {
            self.set_last_error(reason.clone());
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) {
        self.count_by(counter, 1);
    }

    /// Adds `n` to `counter` (none when 0).
    pub fn count_by(&self, counter: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        if n > 0 {
            counter(&self.counters).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The lag of every partition the trigger consumes now.
    pub fn set_lag(&self, lag: Vec<(i32, i64)>) {
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    pub fn lag(&self) -> Vec<(i32, i64)> {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count_assignment(&self) {
        self.count(|c| &c.assignments);
    }

    pub fn count_revocation(&self) {
        self.count(|c| &c.revocations);
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            handled: get(&c.handled),
            batched: get(&c.batched),
            dead_lettered: get(&c.dead_lettered),
            failed: get(&c.failed),
            filtered: get(&c.filtered),
            retried: get(&c.retried),
            waited_for_service: get(&c.waited_for_service),
            replayed: get(&c.replayed),
            assignments: get(&c.assignments),
            revocations: get(&c.revocations),
        }
    }
}
