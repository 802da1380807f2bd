//! The `runnel` binary: the host (`runnel serve`, the default) and the
//! commands that deploy to it; see [`runnel::cli`].

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    runnel::cli::main()
}
