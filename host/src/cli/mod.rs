//! The `runnel` command (clap). Every subcommand has `--help`; wrong
//! arguments print what is wrong and exit with 2.

mod client;
pub mod harness;
mod invoke;
mod new;
mod sign;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "runnel", version, about = "Stream functions on a WebAssembly host")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where a running host's admin API is.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The host's base URL.
    #[arg(long = "host", env = "RUNNEL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The admin token (when the host has RUNNEL_ADMIN_TOKEN set).
    #[arg(long, env = "RUNNEL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host (the default): HTTP API, triggers, deployments.
    Serve,
    /// Send a built function to a running host, which makes it active on every host.
    Deploy {
        /// A function crate's folder (with runnel.toml), or a manifest file.
        path: PathBuf,
        /// The component; default: `<manifest stem>.wasm` beside a manifest
        /// file, or the crate's build output.
        #[arg(long)]
        component: Option<PathBuf>,
        /// The signature; default: `<component>.sig` beside the component
        /// when there is one (`runnel sign` writes it).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Build the crate first (`cargo build --target wasm32-wasip2 --profile wasm`).
        #[arg(long)]
        build: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Show what is deployed on a running host.
    Functions {
        /// Print the JSON the host answered.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Make the previous version of a function active again (or `--version`).
    Rollback {
        name: String,
        /// A version id (from `runnel functions --json`).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run records again through a function's running version: its dead
    /// letters (`--dlq`), or its topic from an offset or a time up to where
    /// the function has got. Prints how many records ran and how they ended.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["dlq", "from_offset", "from_time"])))]
    Replay {
        name: String,
        /// Replay the function's dead letters (each once handled, then skipped).
        #[arg(long)]
        dlq: bool,
        /// With --dlq: only records dead-lettered at or after this time (RFC 3339).
        #[arg(long, requires = "dlq", value_parser = parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Re-run the topic from this offset (in every partition).
        #[arg(long)]
        from_offset: Option<u64>,
        /// Re-run the topic from this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        from_time: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Undeploy a function on every host (its versions are kept).
    Undeploy {
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run one message through a function, without Kafka, against the
    /// configured services (RUNNEL_MONGODB_URI, RUNNEL_SMTP_URL, …); print
    /// the outcome and its log lines. Exit 0 when it handled the message, 3
    /// when it did not.
    Invoke(invoke::InvokeArgs),
    /// Create a function crate under functions/ from a template.
    New(new::NewArgs),
    /// Make an ed25519 key pair for signing functions: the private key to a
    /// file, the public key printed for RUNNEL_TRUSTED_KEYS.
    Keygen(sign::KeygenArgs),
    /// Sign a built function (its manifest and component): writes
    /// `<component>.sig`, which `runnel deploy` sends along.
    Sign(sign::SignArgs),
}

/// Runs the command line; `serve` is handed back to the caller.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    let result = match command {
        Command::Serve => {
            let config = match crate::config::Config::from_env() {
                Ok(c) => c,
                Err(e) => return fail(&anyhow::Error::new(e)),
            };
            runtime.block_on(crate::serve::run(config, shutdown_signal())).map(|()| ExitCode::SUCCESS)
        }
        Command::Deploy { path, component, signature, build, host } => {
            runtime.block_on(client::deploy(&host, &path, component.as_deref(), signature.as_deref(), build))
        }
        Command::Functions { json, host } => runtime.block_on(client::functions(&host, json)),
        Command::Rollback { name, version, host } => runtime.block_on(client::rollback(&host, &name, version.as_deref())),
        Command::Undeploy { name, host } => runtime.block_on(client::undeploy(&host, &name)),
        Command::Replay { name, dlq, since, from_offset, from_time, host } => {
            let body = match (dlq, from_offset, from_time) {
                (true, _, _) => serde_json::json!({ "from": "dead-letters", "since": since }),
                (_, Some(offset), _) => serde_json::json!({ "from": "offset", "offset": offset }),
                (_, _, Some(time)) => serde_json::json!({ "from": "time", "time": time }),
                _ => unreachable!("clap requires one source"),
            };
            runtime.block_on(client::replay(&host, &name, &body))
        }
        Command::Invoke(args) => runtime.block_on(invoke::run(args)),
        Command::New(args) => new::run(args),
        Command::Keygen(args) => sign::keygen(args),
        Command::Sign(args) => sign::sign(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// An RFC 3339 time, e.g. `2026-11-23T10:00:00Z`.
fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("'{s}' is not an RFC 3339 time like 2026-11-23T10:00:00Z: {e}"))
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("runnel: {error:#}");
    ExitCode::FAILURE
}

/// Ctrl-C or SIGTERM. If SIGTERM cannot be watched, Ctrl-C still works.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot watch for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            },
            Err(e) => {
                tracing::warn!("cannot watch for SIGTERM ({e}); Ctrl-C still stops the host");
                ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of the whole command line.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
