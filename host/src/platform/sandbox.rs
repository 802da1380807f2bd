//! The WASI a function sees: WASI p2, locked down, all of it in this file.
//!
//! Rust's `std`, componentize-py and componentize-js all import WASI p2, so
//! the host links it, but a function gets nothing from it that it was not
//! granted through a Runnel capability:
//! - no environment variables, no arguments, no working directory, an empty
//!   stdin;
//! - no preopened directories, so no file can be opened;
//! - no TCP, no UDP, no name lookup, and an address check that refuses every
//!   address (a second lock, should one of the switches ever be turned on);
//! - stdout and stderr are captured in memory, at most [`OUTPUT_KEPT`] bytes
//!   each per call (the rest is counted and dropped, never an error), and
//!   become the function's log lines;
//! - clocks and random numbers are the host's (at most 64 KiB of random bytes
//!   per request). They are not journaled: a function that needs the same
//!   time on a redelivered record uses the `clock` capability;
//! - at most [`MAX_RESOURCES`] WASI resources (streams, pollables…) at once,
//!   so a function cannot grow the host's own memory through them.
//!
//! [`check_imports`] refuses, at deploy, a component importing anything
//! beyond WASI p2 and the `runnel:function` world (e.g. `wasi:http`), naming
//! the import.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{
    WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    cli::{IsTerminal, StdoutStream},
    p2::{OutputStream, Pollable, StreamResult},
};

use super::capabilities::{self, InstanceState};

/// Bytes of stdout, and of stderr, kept per call.
pub const OUTPUT_KEPT: usize = 16 * 1024;

/// WASI resources an instance may hold at once (the table lives in the
/// host's memory, outside the instance's memory cap).
pub const MAX_RESOURCES: usize = 10_000;

/// The WASI packages a function may import (any 0.2.x version): the ones
/// [`link`] provides, each locked down as the module documentation says.
const WASI_PACKAGES: &[&str] = &["wasi:io", "wasi:clocks", "wasi:random", "wasi:cli", "wasi:filesystem", "wasi:sockets"];

/// The WASI state of one instance.
pub struct Sandbox {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: Capture,
    stderr: Capture,
}

impl Sandbox {
    pub fn new() -> Self {
        let (stdout, stderr) = (Capture::default(), Capture::default());
        let ctx = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .max_random_size(64 * 1024)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Sandbox { ctx, table, stdout, stderr }
    }

    /// What the call wrote to stdout and stderr, as lines, and how many bytes
    /// of each were dropped past [`OUTPUT_KEPT`].
    pub fn take_output(&self) -> [(&'static str, Vec<String>, usize); 2] {
        [("stdout", self.stdout.take_lines()), ("stderr", self.stderr.take_lines())]
            .map(|(name, (lines, dropped))| (name, lines, dropped))
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.sandbox.ctx, table: &mut self.sandbox.table }
    }
}

/// Adds WASI p2 to `linker`.
pub fn link(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Ok(())
}

/// Refuses a component that imports anything but WASI p2 and the
/// capabilities, naming every such import.
pub fn check_imports(component: &Component) -> anyhow::Result<()> {
    let engine = component.engine();
    let refused: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| !allowed(name))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the component imports {}, which Runnel does not give; a function may import WASI p2 ({}) and \
         runnel:function/{{{},batch}}",
        refused.join(", "),
        WASI_PACKAGES.join(", "),
        capabilities::NAMES.join(",")
    )
}

/// `wasi:cli/stdout@0.2.6` → allowed; `wasi:http/types@0.2.0` → not.
fn allowed(import: &str) -> bool {
    let Some((package, rest)) = import.split_once('/') else { return false };
    if package == "runnel:function" {
        return true;
    }
    let version = rest.split_once('@').map(|(_, version)| version);
    // A released 0.2.x (wasmtime-wasi links those), not a pre-release.
    WASI_PACKAGES.contains(&package) && version.is_some_and(|v| v.starts_with("0.2.") && !v.contains('-'))
}

/// A bounded in-memory stdout or stderr: keeps the first [`OUTPUT_KEPT`]
/// bytes, counts and drops the rest. Writing never fails, so a function
/// printing too much goes on running (and is cut off by its time limit).
#[derive(Clone, Default)]
struct Capture {
    buffer: Arc<Buffer>,
}

#[derive(Default)]
struct Buffer {
    captured: Mutex<Captured>,
    /// Whether anything was written since the last take: most calls write
    /// nothing, and a take then costs one load, not a lock.
    written: AtomicBool,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: usize,
}

impl Capture {
    fn push(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut captured = self.buffer.captured.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_KEPT.saturating_sub(captured.kept.len()).min(bytes.len());
        captured.kept.extend_from_slice(&bytes[..room]);
        captured.dropped += bytes.len() - room;
        // Under the lock, so that a take that sees it sees the bytes.
        self.buffer.written.store(true, Ordering::Release);
    }

    fn take_lines(&self) -> (Vec<String>, usize) {
        if !self.buffer.written.load(Ordering::Acquire) {
            return (Vec::new(), 0);
        }
        let mut captured = self.buffer.captured.lock().unwrap_or_else(|e| e.into_inner());
        self.buffer.written.store(false, Ordering::Relaxed);
        let Captured { kept, dropped } = std::mem::take(&mut *captured);
        let text = String::from_utf8_lossy(&kept);
        let lines = text.lines().filter(|line| !line.trim().is_empty()).map(str::to_owned).collect();
        (lines, dropped)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wasi_p2_and_runnel_imports_are_allowed() {
        assert!(allowed("wasi:cli/stdout@0.2.6"));
        assert!(allowed("wasi:sockets/tcp@0.2.9"));
        assert!(allowed("runnel:function/documents@0.1.0"));
        assert!(!allowed("wasi:http/types@0.2.0"));
        assert!(!allowed("wasi:cli/stdout@0.3.0"));
        assert!(!allowed("wasi:cli/stdout@0.2.0-rc-2023-11-10"));
        assert!(!allowed("wasi:cli/stdout"));
        assert!(!allowed("example:thing/api@1.0.0"));
        assert!(!allowed("plain-import"));
    }

    #[test]
    fn output_past_the_bound_is_dropped_and_counted() {
        let capture = Capture::default();
        capture.push(b"one\ntwo\n");
        capture.push(&vec![b'x'; OUTPUT_KEPT]);
        let (lines, dropped) = capture.take_lines();
        assert_eq!(&lines[..2], ["one", "two"]);
        assert_eq!(dropped, 8);
        assert_eq!(capture.take_lines(), (vec![], 0));
    }
}
