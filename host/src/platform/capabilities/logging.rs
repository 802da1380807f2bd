//! `logging`: a function's log lines, written by the host with the
//! function's name, and kept (bounded) with the call's outcome so that
//! `runnel invoke` and the admin API can show them.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Capability, NoSettings};
use crate::platform::{runtime::bindings::runnel::function::logging as wit, trace::TraceContext};

/// Lines kept per call, and bytes kept per line.
const MAX_LINES: usize = 100;
const MAX_LINE_BYTES: usize = 4096;

pub struct Logging;

pub struct State {
    function: Arc<str>,
    /// The record's trace, when the call does not run in it (a record of a
    /// batch): each line names it.
    trace: Option<TraceContext>,
    /// What this call logged, oldest first.
    pub lines: Vec<LogLine>,
    pub dropped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

impl Capability for Logging {
    type Grant = NoSettings;
    type Resolved = ();
    type State = State;

    fn resolve(&self, _: &str, _: &NoSettings, _: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        Ok(())
    }

    fn instance(&self, function: &Arc<str>, _: &Arc<()>, calls: &crate::platform::journal::Calls) -> State {
        State { function: function.clone(), trace: calls.trace(), lines: Vec::new(), dropped: 0 }
    }

    fn renew(&self, state: &mut State, _: &Arc<str>, _: &Arc<()>, calls: &crate::platform::journal::Calls) {
        state.trace = calls.trace();
        state.lines.clear();
        state.dropped = 0;
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut State) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasSelf<State>>(linker, get)?;
        Ok(())
    }
}

impl State {
    /// Keeps one line of the call (cut to [`MAX_LINE_BYTES`]) and writes it
    /// to the host's log with the function's name and where it came from
    /// (`logging`, `stdout` or `stderr`).
    pub fn record(&mut self, level: wit::Level, source: &'static str, mut message: String) {
        if message.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let function = &*self.function;
        let trace = self.trace.map(|t| t.trace_id());
        let trace_id = trace.as_deref();
        let level = match level {
            wit::Level::Trace => {
                tracing::trace!(function, source, trace_id, "{message}");
                "trace"
            }
            wit::Level::Debug => {
                tracing::debug!(function, source, trace_id, "{message}");
                "debug"
            }
            wit::Level::Info => {
                tracing::info!(function, source, trace_id, "{message}");
                "info"
            }
            wit::Level::Warn => {
                tracing::warn!(function, source, trace_id, "{message}");
                "warn"
            }
            wit::Level::Error => {
                tracing::error!(function, source, trace_id, "{message}");
                "error"
            }
        };
        if self.lines.len() < MAX_LINES {
            self.lines.push(LogLine { level, message });
        } else {
            self.dropped += 1;
        }
    }

    /// Keeps what the call wrote to stdout (as info lines) or stderr (as
    /// warnings), noting how many bytes the sandbox dropped.
    pub fn record_output(&mut self, stream: &'static str, lines: Vec<String>, dropped_bytes: usize) {
        let level = if stream == "stderr" { wit::Level::Warn } else { wit::Level::Info };
        for line in lines {
            self.record(level, stream, line);
        }
        if dropped_bytes > 0 {
            self.record(wit::Level::Warn, stream, format!("… {dropped_bytes} more bytes of {stream} not kept"));
        }
    }
}

impl wit::Host for State {
    async fn log(&mut self, level: wit::Level, message: String) {
        self.record(level, "logging", message);
    }
}
