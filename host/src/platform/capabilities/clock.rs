//! `clock`: the host's wall clock (a function has no clock of its own).
//!
//! Journaled: a record delivered again reads the time its first delivery
//! read, so that it takes the same path.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, NoSettings};
use crate::platform::{journal::Calls, runtime::bindings::runnel::function::clock as wit};

pub struct Clock;

pub struct State {
    calls: Calls,
}

impl Capability for Clock {
    type Grant = NoSettings;
    type Resolved = ();
    type State = State;

    fn resolve(&self, _: &str, _: &NoSettings, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        Ok(())
    }

    fn instance(&self, _: &Arc<str>, _: &Arc<()>, calls: &Calls) -> State {
        State { calls: calls.clone() }
    }

    fn renew(&self, state: &mut State, _: &Arc<str>, _: &Arc<()>, calls: &Calls) {
        state.calls.clone_from(calls);
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl wit::Host for State {
    async fn now_ms(&mut self) -> i64 {
        // Without a journal to read, the clock still answers: the time now.
        self.calls.run("clock.now-ms", false, &(), |_| true, |_| async { now_ms() }).await.unwrap_or_else(|_| now_ms())
    }
}
