//! `clock`: the host's wall clock (a function has no clock of its own).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, NoSettings};
use crate::platform::runtime::bindings::runnel::function::clock as wit;

pub struct Clock;

pub struct State;

impl Capability for Clock {
    type Grant = NoSettings;
    type Resolved = ();
    type State = State;

    fn resolve(&self, _: &str, _: &NoSettings, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        Ok(())
    }

    fn instance(&self, _: &Arc<str>, _: &Arc<()>) -> State {
        State
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

impl wit::Host for State {
    async fn now_ms(&mut self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}
