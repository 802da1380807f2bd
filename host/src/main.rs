//! The `runnel` binary: the host (`runnel serve`, the default) and the
//! commands that deploy to it; see [`runnel::cli`].

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Records are allocated on the thread that reads them from their partition
/// and freed on the one that ran them: jemalloc's per-thread caches free
/// across threads without the locks and consolidation that glibc's malloc
/// spent a third of a reused no-op record's CPU time on.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: a thread of its own gives freed pages back to the
/// system within a second, so the resident memory stays that of what is in
/// use.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let filter = || EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // One JSON object per line for log collectors; text for people.
    match std::env::var("RUNNEL_LOG_FORMAT").as_deref().map(str::trim) {
        Ok("json") => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
        Ok("text") | Ok("") | Err(_) => {
            tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init()
        }
        Ok(other) => {
            eprintln!("RUNNEL_LOG_FORMAT: '{other}' is not a log format (text or json)");
            return ExitCode::from(2);
        }
    }
    runnel::cli::main()
}
