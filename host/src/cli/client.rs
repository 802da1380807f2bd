//! The commands that talk to a running host's admin API.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::HostArgs;

fn request(host: &HostArgs, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", host.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = &host.token {
        request = request.bearer_auth(token);
    }
    request
}

/// Sends `request`; the JSON answer, or an error with the host's problem detail.
async fn send(host: &HostArgs, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.with_context(|| format!("no Runnel host answers at {}", host.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = value["detail"].as_str().map(String::from).unwrap_or(text);
        bail!("{status}: {detail}");
    }
    Ok(value)
}

/// The manifest and component a path names.
pub(super) fn locate(path: &Path, component: Option<&Path>, build: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (manifest, crate_dir) = if path.is_dir() {
        (path.join("runnel.toml"), Some(path.to_path_buf()))
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let crate_dir = dir.join("Cargo.toml").exists().then_some(dir);
        (path.to_path_buf(), crate_dir)
    };
    if !manifest.is_file() {
        bail!("'{}': no manifest there (expected a function folder with runnel.toml, or a .toml file)", manifest.display());
    }
    if let Some(component) = component {
        return Ok((manifest, component.to_path_buf()));
    }
    // A Python or JavaScript function's folder: scripts/build-function
    // writes `<folder>/<folder name>.wasm`.
    let folder = manifest.parent().filter(|_| manifest.file_name().is_some_and(|n| n == "runnel.toml"));
    if let Some(folder) = folder
        && !folder.join("Cargo.toml").exists()
    {
        if build {
            bail!("--build builds Rust crates; build this function with scripts/build-function '{}'", folder.display());
        }
        let folder = folder.canonicalize().with_context(|| format!("'{}'", folder.display()))?;
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok((manifest, folder.join(format!("{name}.wasm"))));
    }
    let beside = manifest.with_extension("wasm");
    let crate_dir = match crate_dir {
        Some(dir) if build || !beside.is_file() => dir,
        _ => return Ok((manifest, beside)),
    };
    let cargo_toml: toml::Table = toml::from_str(&std::fs::read_to_string(crate_dir.join("Cargo.toml"))?)
        .with_context(|| format!("'{}'", crate_dir.join("Cargo.toml").display()))?;
    let package = cargo_toml
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .with_context(|| format!("'{}' has no [package] name", crate_dir.join("Cargo.toml").display()))?
        .to_string();
    if build {
        let status = std::process::Command::new("cargo")
            .args(["build", "--quiet", "-p", &package, "--target", "wasm32-wasip2", "--profile", "wasm"])
            .current_dir(&crate_dir)
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("building '{package}' failed");
        }
    }
    let metadata = std::process::Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(&crate_dir)
        .output()
        .context("cannot run cargo metadata")?;
    let metadata: Value = serde_json::from_slice(&metadata.stdout).context("cargo metadata")?;
    let target = metadata["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    let wasm = Path::new(target).join("wasm32-wasip2/wasm").join(format!("{}.wasm", package.replace('-', "_")));
    Ok((manifest, wasm))
}

pub async fn deploy(
    host: &HostArgs,
    path: &Path,
    component: Option<&Path>,
    signature: Option<&Path>,
    build: bool,
) -> anyhow::Result<ExitCode> {
    let (manifest_path, component_path) = locate(path, component, build)?;
    // `runnel sign` writes it beside the component.
    let beside = super::sign::signature_path(&component_path);
    let signature = match signature {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("'{}'", path.display()))?),
        None if beside.is_file() => Some(std::fs::read_to_string(&beside).with_context(|| format!("'{}'", beside.display()))?),
        None => None,
    };
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| format!("'{}'", manifest_path.display()))?;
    let bytes = std::fs::read(&component_path)
        .with_context(|| format!("'{}' (build the function first, or pass --build)", component_path.display()))?;
    // Checked here too, so that a mistake is named with its line before
    // anything is sent.
    let name = crate::platform::deployments::Manifest::parse(&manifest)
        .map_err(|e| anyhow::anyhow!("'{}': {e}", manifest_path.display()))?
        .name;
    let form = Form::new()
        .part("manifest", Part::text(manifest).file_name("runnel.toml").mime_str("application/toml")?)
        .part("component", Part::bytes(bytes).file_name(format!("{name}.wasm")).mime_str("application/wasm")?);
    let form = match signature {
        Some(signature) => form.part("signature", Part::text(signature).file_name(format!("{name}.sig")).mime_str("application/json")?),
        None => form,
    };
    let answer = send(host, request(host, reqwest::Method::PUT, &format!("/admin/functions/{name}")).multipart(form)).await?;
    println!(
        "deployed {name} version {} ({})",
        answer["activeVersion"].as_str().unwrap_or("?"),
        answer["state"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn functions(host: &HostArgs, json: bool) -> anyhow::Result<ExitCode> {
    let answer = send(host, request(host, reqwest::Method::GET, "/admin/functions")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 9]> = answer
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let running = &f["running"];
            let count = |k: &str| running["counters"][k].as_u64().map(|n| n.to_string()).unwrap_or("-".into());
            [
                f["name"].as_str().unwrap_or("?").to_string(),
                f["state"].as_str().unwrap_or("?").to_string(),
                f["activeVersion"].as_str().map(|v| v.chars().take(12).collect()).unwrap_or("-".into()),
                running["topic"].as_str().unwrap_or("-").to_string(),
                running["group"].as_str().unwrap_or("-").to_string(),
                count("handled"),
                count("deadLettered"),
                f["versions"].as_array().map_or(0, Vec::len).to_string(),
                // The active version's signer.
                f["versions"]
                    .as_array()
                    .and_then(|versions| versions.iter().find(|v| v["version"] == f["activeVersion"]))
                    .and_then(|v| v["signer"].as_str())
                    .unwrap_or("-")
                    .to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "VERSION", "TOPIC", "GROUP", "HANDLED", "DLQ", "VERSIONS", "SIGNER"].map(String::from);
    let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(&rows) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(host: &HostArgs, name: &str, version: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut request = request(host, reqwest::Method::POST, &format!("/admin/functions/{name}/rollback"));
    if let Some(version) = version {
        request = request.json(&serde_json::json!({ "version": version }));
    }
    let answer = send(host, request).await?;
    println!("{name} is at version {}", answer["activeVersion"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

pub async fn undeploy(host: &HostArgs, name: &str) -> anyhow::Result<ExitCode> {
    send(host, request(host, reqwest::Method::DELETE, &format!("/admin/functions/{name}"))).await?;
    println!("{name} undeployed");
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(host: &HostArgs, name: &str, body: &Value) -> anyhow::Result<ExitCode> {
    let report = send(host, request(host, reqwest::Method::POST, &format!("/admin/functions/{name}/replay")).json(body)).await?;
    if let Some(moved) = report["moved"].as_object() {
        let at: Vec<String> = moved.iter().map(|(p, o)| format!("partition {p} at offset {o}")).collect();
        println!("{name} is undeployed: its group starts again from {} when it is deployed", at.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let outcomes: Vec<String> = report["outcomes"]
        .as_object()
        .map(|o| o.iter().map(|(kind, n)| format!("{kind} {n}")).collect())
        .unwrap_or_default();
    println!(
        "{name}: replayed {} record(s) from {}{}",
        report["replayed"],
        report["topic"].as_str().unwrap_or("?"),
        if outcomes.is_empty() { String::new() } else { format!(": {}", outcomes.join(", ")) }
    );
    let journal = report["answeredFromJournal"].as_u64().unwrap_or(0);
    if journal > 0 {
        println!("  {journal} had calls answered from the journal (done before, not repeated)");
    }
    let skipped = report["skipped"].as_u64().unwrap_or(0);
    if skipped > 0 {
        println!("  {skipped} dead letter(s) skipped: replayed and handled before");
    }
    let handled = report["outcomes"]["ok"].as_u64().unwrap_or(0);
    let replayed = report["replayed"].as_u64().unwrap_or(0);
    // 3, like invoke, when something replayed was not handled.
    Ok(if handled == replayed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
