//! The `runnel` binary: the host (`runnel serve`, the default) and the
//! commands that deploy to it; see [`runnel::cli`].

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

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
