//! The `runnel` command: wrong arguments exit 2 with a message; deploy,
//! functions, rollback and undeploy against a running host; invoke runs one
//! message through a function against the real servers and prints the
//! outcome and its log lines.

mod support;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use support::{Host, Servers, documents, fixture, recorder_manifest};

fn runnel(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
    cmd.args(args).env_remove("RUNNEL_URL").env_remove("RUNNEL_ADMIN_TOKEN").env("RUNNEL_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start runnel");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("runnel-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn wrong_arguments_exit_2_with_a_message_and_every_command_has_help() {
    for args in [
        &["no-such-command"][..],
        &["deploy"],
        &["rollback"],
        &["invoke", "f.wasm"],
        &["invoke", "f.wasm", "--manifest", "m.toml", "--header", "no-equals-sign"],
        &["functions", "--host"],
        &["serve", "extra"],
        &["new"],
    ] {
        let out = runnel(args, &[], None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("error:"), "{args:?}: {}", text(&out.stderr));
    }
    for command in ["serve", "deploy", "functions", "rollback", "undeploy", "invoke", "new"] {
        let out = runnel(&[command, "--help"], &[], None);
        assert_eq!(out.status.code(), Some(0), "{command}");
        assert!(text(&out.stdout).contains("Usage: runnel"), "{command}: {}", text(&out.stdout));
    }
    let out = runnel(&["new", "Not A Name", "--dir", &tempdir().display().to_string()], &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not a function name"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_roll_back_and_undeploy_through_the_cli() {
    let servers = Servers::from_env();
    let host = Host::start(&servers, &[]).await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let name = format!("cli-{id}");
    let dir = tempdir();
    let manifest = dir.join(format!("{name}.toml"));
    std::fs::write(dir.join(format!("{name}.wasm")), fixture("recorder")).unwrap();
    let host_args = ["--host", host.base.as_str()];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(host_args);
        runnel(&all, &[], None)
    };
    let manifest_path = manifest.display().to_string();

    let mut versions = Vec::new();
    for label in ["A", "B"] {
        std::fs::write(&manifest, recorder_manifest(&name, &name, &name, "records", label)).unwrap();
        let out = run(&["deploy", &manifest_path]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.starts_with(&format!("deployed {name} version ")) && said.contains("(running)"), "{said}");
        versions.push(said.split_whitespace().nth(3).unwrap().to_string());
    }
    assert_ne!(versions[0], versions[1]);

    let out = run(&["functions"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("running") && row.contains(&versions[1][..12]), "{row}");
    let out = run(&["functions", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|f| f["name"] == name.as_str()));

    let out = run(&["rollback", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{name} is at version {}", versions[0]));
    let out = run(&["rollback", &name, "--version", &versions[1]]);
    assert_eq!(text(&out.stdout).trim(), format!("{name} is at version {}", versions[1]));

    // Refusals come back as the host's reason, exit 1.
    std::fs::write(dir.join("broken.toml"), recorder_manifest("broken", "t", "g", "records", "x")).unwrap();
    std::fs::write(dir.join("broken.wasm"), b"not wasm").unwrap();
    let out = run(&["deploy", &dir.join("broken.toml").display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("422") && text(&out.stderr).contains("not a WebAssembly file"), "{}", text(&out.stderr));
    let out = run(&["deploy", &dir.join("missing.toml").display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no manifest there"), "{}", text(&out.stderr));

    let out = run(&["undeploy", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["undeploy", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let f = host.get_json(&format!("/admin/functions/{name}")).await;
    assert_eq!(f["state"], "undeployed", "{f}");

    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let out = runnel(&["functions", "--host", &dead], &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Runnel host answers"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_one_message_and_prints_the_outcome_and_logs() {
    let servers = Servers::from_env();
    let dir = tempdir();
    let probe = dir.join("probe.wasm");
    std::fs::write(&probe, fixture("probe")).unwrap();
    let probe_manifest = dir.join("probe.toml");
    std::fs::write(&probe_manifest, "name = 'probe'\n[trigger.kafka]\ntopic = 'probe'\n").unwrap();
    let (probe, probe_manifest) = (probe.display().to_string(), probe_manifest.display().to_string());
    let args = ["invoke", probe.as_str(), "--manifest", probe_manifest.as_str(), "--payload", "-"];
    for (payload, code, printed) in
        [("ok", 0, "ok"), ("bad-input", 3, "bad-input: asked for bad-input"), ("retry", 3, "retry-later: asked to retry"), ("give-up", 3, "give-up: asked to give up"), ("trap", 3, "trap: ")]
    {
        let out = runnel(&args, &[], Some(payload.as_bytes()));
        assert_eq!(out.status.code(), Some(code), "{payload}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(printed), "{payload}: {}", text(&out.stdout));
    }
    let out = runnel(&["invoke", &probe, "--manifest", &probe_manifest, "--payload", "/no/such/file"], &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/no/such/file"), "{}", text(&out.stderr));

    // Against the real database and SMTP server: the shipped function
    // stores an alert, mails it, and its log line is printed.
    let database = format!("test_{}", uuid::Uuid::new_v4().simple());
    let functions = servers.functions_dir.clone();
    let wasm = functions.join("store-alert-to-email.wasm").display().to_string();
    let manifest = functions.join("store-alert-to-email.toml").display().to_string();
    let payload = br#"{"storeName":"Invoked Store","storeStatus":"CLOSED"}"#;
    let env = [
        ("RUNNEL_MONGODB_URI", servers.mongodb_uri.as_str()),
        ("RUNNEL_MONGODB_DATABASE", database.as_str()),
        ("RUNNEL_SMTP_URL", servers.smtp_url.as_str()),
        ("RUNNEL_MAIL_FROM", "invoke@example.com"),
        ("ALERT_DISTRIBUTION_LIST", "ops@example.com"),
    ];
    let out = runnel(&["invoke", &wasm, "--manifest", &manifest, "--payload", "-", "--key", "s1", "--header", "source=cli"], &env, Some(payload));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
    assert!(text(&out.stderr).contains("[info] alert ") && text(&out.stderr).contains("'Invoked Store' mailed"), "{}", text(&out.stderr));
    let alerts = documents(&servers.mongodb_uri, &database, "store_alerts").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["storeName"], "Invoked Store");
    // Without its required setting, the function is not run at all.
    let without: Vec<_> = env.iter().filter(|(k, _)| *k != "ALERT_DISTRIBUTION_LIST").cloned().collect();
    let out = runnel(&["invoke", &wasm, "--manifest", &manifest, "--payload", "-"], &without, Some(payload));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ALERT_DISTRIBUTION_LIST"), "{}", text(&out.stderr));
}
