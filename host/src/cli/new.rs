//! `runnel new`: a function crate from a template.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The function's name (letters, digits and '-').
    pub name: String,
    /// The topic that triggers it (default: the name).
    #[arg(long)]
    pub topic: Option<String>,
    /// Where to create it: the `functions/` folder of a Runnel workspace
    /// (the crate uses the workspace's runnel-guest and, for its test, the
    /// host crate at `../../host`).
    #[arg(long, default_value = "functions")]
    pub dir: PathBuf,
}

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.starts_with('-') {
        bail!("'{name}' is not a function name: use lowercase letters, digits and '-'");
    }
    let dir = args.dir.join(name);
    if dir.exists() {
        bail!("'{}' already exists", dir.display());
    }
    let topic = args.topic.as_deref().unwrap_or(name);
    let ident = name.replace('-', "_");
    let files = [
        ("Cargo.toml", CARGO.replace("{name}", name)),
        ("runnel.toml", MANIFEST.replace("{name}", name).replace("{topic}", topic)),
        ("src/lib.rs", LIB.replace("{name}", name)),
        ("tests/invoke.rs", TEST.replace("{name}", name).replace("{ident}", &ident)),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    println!("created {}", dir.display());
    println!("build:  cargo build -p {name} --target wasm32-wasip2 --profile wasm");
    println!("test:   cargo test -p {name}");
    println!("deploy: runnel deploy {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

const CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
runnel-guest.workspace = true

[dev-dependencies]
# Runs the built component the way `runnel invoke` does.
runnel = { path = "../../host" }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
"#;

const MANIFEST: &str = r#"# Deployment manifest of {name}: what triggers it and what it may use.
name = "{name}"

[trigger.kafka]
topic = "{topic}"
"#;

const LIB: &str = r#"//! `{name}`: a Runnel function.
//!
//! No standard library in the component: the host gives functions no WASI,
//! which Rust's `std` would import. (Built natively, for the tests, it has one.)
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;

use runnel_guest::{Guest, HandlerError, Message, logging};

struct Function;

impl Guest for Function {
    fn handle(message: Message) -> Result<(), HandlerError> {
        if message.payload.is_empty() {
            return Err(HandlerError::BadInput("an empty payload".into()));
        }
        logging::log(logging::Level::Info, &format!("{} bytes at offset {}", message.payload.len(), message.offset));
        Ok(())
    }
}

runnel_guest::export_function!(Function);
"#;

const TEST: &str = r#"//! Runs the built component (`cargo build -p {name} --target wasm32-wasip2
//! --profile wasm` first) through the host's runtime, as `runnel invoke` does.

use runnel::cli::harness;

#[tokio::test]
async fn handles_a_message_and_refuses_an_empty_one() {
    let function = harness::Harness::load("{name}").await;
    let ok = function.invoke(b"hello").await;
    assert_eq!(ok.outcome.kind(), "ok", "{:?}", ok);
    assert!(ok.logs.iter().any(|l| l.message.contains("5 bytes")), "{:?}", ok.logs);
    assert_eq!(function.invoke(b"").await.outcome.kind(), "bad-input");
}
"#;
