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
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to create it: the `functions/` folder of a Runnel workspace
    /// (a Rust crate uses the workspace's runnel-guest and, for its
    /// component test, the host crate at `../../host`).
    #[arg(long, default_value = "functions")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
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
    let language = match args.lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
    };
    let manifest = ("runnel.toml", MANIFEST.replace("{name}", name).replace("{topic}", topic).replace("{language}", language));
    let files = match args.lang {
        Lang::Rust => vec![
            ("Cargo.toml", CARGO.replace("{name}", name)),
            manifest,
            ("src/lib.rs", LIB.replace("{name}", name)),
            ("tests/invoke.rs", TEST.replace("{name}", name)),
        ],
        Lang::Python => vec![manifest, ("app.py", PYTHON.replace("{name}", name)), ("test_app.py", PYTHON_TEST.into())],
        Lang::Js => vec![manifest, ("app.js", JS.replace("{name}", name))],
    };
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    println!("created {}", dir.display());
    println!("build:  scripts/build-function {}", dir.display());
    match args.lang {
        Lang::Rust => println!("test:   cargo test -p {name}"),
        Lang::Python => println!("test:   cd {} && PYTHONPATH=<runnel>/sdk/python python3 -m unittest", dir.display()),
        Lang::Js => {}
    }
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
language = "{language}"

[trigger.kafka]
topic = "{topic}"
"#;

const LIB: &str = r#"//! `{name}`: a Runnel function.

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

/// Natively, against an in-memory host: `cargo test -p {name}`.
#[cfg(test)]
mod tests {
    use super::*;
    use runnel_guest::testing::{TestHost, message};

    #[test]
    fn logs_the_size_and_refuses_an_empty_payload() {
        let mut host = TestHost::new();
        host.run(|| Function::handle(message("hello"))).unwrap();
        assert!(host.logs[0].1.contains("5 bytes"), "{:?}", host.logs);
        assert!(matches!(host.run(|| Function::handle(message(""))), Err(HandlerError::BadInput(_))));
    }
}
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

const PYTHON: &str = r#""""{name}: a Runnel function."""

import runnel


@runnel.function
def handle(message: runnel.Message) -> None:
    if not message.payload:
        raise runnel.BadInput("an empty payload")
    runnel.log(f"{len(message.payload)} bytes at offset {message.offset}")
"#;

const PYTHON_TEST: &str = r#""""Natively, against an in-memory host: python -m unittest (with
<runnel>/sdk/python on PYTHONPATH)."""

import unittest

import runnel
from runnel.testing import TestHost

import app


class Handle(unittest.TestCase):
    def test_logs_the_size_and_refuses_an_empty_payload(self):
        host = TestHost()
        host.run(app.handle, b"hello")
        self.assertIn("5 bytes", host.logs[0][1])
        with self.assertRaises(runnel.BadInput):
            host.run(app.handle, b"")


if __name__ == "__main__":
    unittest.main()
"#;

const JS: &str = r#"// {name}: a Runnel function.
import { BadInput, log } from "runnel";

export function handle(message) {
  if (message.payload.length === 0) {
    throw new BadInput("an empty payload");
  }
  log(`${message.payload.length} bytes at offset ${message.offset}`);
}
"#;
