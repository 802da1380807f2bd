//! `runnel invoke`: one message through a function, no Kafka.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::platform::{
    capabilities::{Services, mail::Mail},
    deployments::Manifest,
    runtime::{Function, Header, Limits, Message, Outcome, Runtime},
};

#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// The function's component.
    pub component: PathBuf,
    /// Its manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The record's payload: a file, or `-` for standard input (default: empty).
    #[arg(long)]
    pub payload: Option<PathBuf>,
    /// The record's key.
    #[arg(long)]
    pub key: Option<String>,
    /// A record header, `name=value`; repeat for more.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The record's topic (default: the manifest's).
    #[arg(long)]
    pub topic: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not name=value"))
}

/// Services from the environment, connecting lazily: a function that uses
/// no database needs none.
pub(crate) async fn services() -> anyhow::Result<Services> {
    let config = crate::config::Config::from_env()?;
    let client = mongodb::Client::with_uri_str(&config.mongodb_uri)
        .await
        .with_context(|| format!("RUNNEL_MONGODB_URI: cannot use '{}'", crate::platform::redact::url(&config.mongodb_uri)))?;
    Ok(Services::new(
        client.database(&config.mongodb_database),
        Mail::new(&config.smtp_url, &config.mail_from)?,
        config.capability_timeout,
    ))
}

/// Compiles the component with the grants of `manifest_text` resolved
/// against the environment; returns the function and its topic.
pub async fn load(component: &[u8], manifest_text: &str, services: Services) -> anyhow::Result<(Function, String)> {
    let manifest = Manifest::parse(manifest_text).map_err(|e| anyhow::anyhow!("manifest: {e}"))?;
    let compiled_dir = crate::config::Config::from_env().ok().and_then(|config| config.compiled_dir);
    let runtime = Runtime::new(services, Limits::default(), compiled_dir)?;
    let env = |var: &str| std::env::var(var).ok();
    let grants = runtime.services().resolve(&manifest.name, &manifest.capabilities, &env).context("manifest")?;
    let function = runtime.load(&manifest.name, component, grants).await.context("component")?;
    Ok((function, manifest.trigger.kafka.topic))
}

pub async fn run(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let manifest_text =
        std::fs::read_to_string(&args.manifest).with_context(|| format!("'{}'", args.manifest.display()))?;
    let component = std::fs::read(&args.component).with_context(|| format!("'{}'", args.component.display()))?;
    let payload = match &args.payload {
        None => Vec::new(),
        Some(p) if p.as_os_str() == "-" => {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("cannot read the payload from standard input")?;
            bytes
        }
        Some(p) => std::fs::read(p).with_context(|| format!("'{}'", p.display()))?,
    };
    let services = services().await?;
    let (function, manifest_topic) = load(&component, &manifest_text, services)
        .await
        .with_context(|| format!("'{}'", args.manifest.display()))?;
    let message = Message {
        topic: args.topic.unwrap_or(manifest_topic),
        partition: 0,
        offset: 0,
        key: args.key.map(String::into_bytes),
        payload,
        headers: args.headers.into_iter().map(|(key, value)| Header { key, value: value.into_bytes() }).collect(),
        timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
    };
    let invocation = function.invoke(&message).await;
    for line in &invocation.logs {
        eprintln!("[{}] {}", line.level, line.message);
    }
    let outcome = invocation.outcome.kind();
    match &invocation.outcome {
        Outcome::Handled => println!("{outcome}"),
        Outcome::Declined(e) => {
            let reason = match e {
                crate::platform::runtime::HandlerError::BadInput(r)
                | crate::platform::runtime::HandlerError::RetryLater(r)
                | crate::platform::runtime::HandlerError::GiveUp(r) => r,
            };
            println!("{outcome}: {reason}");
        }
        Outcome::Failed(e) | Outcome::NotStarted(e) => println!("{outcome}: {e:#}"),
    }
    Ok(if matches!(invocation.outcome, Outcome::Handled) { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
