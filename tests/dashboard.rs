//! The dashboard in a real browser: headless Chromium, driven through
//! chromedriver's WebDriver API, opens `/ui` while store updates flow,
//! sees the counters move, the recent alerts and a dead letter, replays
//! the dead letters with the page's button, and leaves a screenshot in
//! `target/test-artifacts/dashboard.png`.

mod support;

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Host, Servers, eventually, spawn_listening, store_alert_flow::{DISTRIBUTION_LIST, create_store}};

const TOKEN: &str = "dashboard-admin-token-0123456789";

/// A Chromium session through chromedriver.
struct Browser {
    _driver: tokio::process::Child,
    url: String,
    client: reqwest::Client,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = std::env::var("RUNNEL_CHROMEDRIVER").expect("RUNNEL_CHROMEDRIVER: run the tests with scripts/test, which installs Chromium");
        let chromium = std::env::var("RUNNEL_CHROMIUM").expect("RUNNEL_CHROMIUM: run the tests with scripts/test");
        let (driver, port) = spawn_listening("chromedriver", |port| {
            let mut cmd = tokio::process::Command::new(&driver_bin);
            cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
            cmd
        })
        .await;
        let base = format!("http://127.0.0.1:{port}");
        let client = support::client();
        eventually(Duration::from_secs(30), "chromedriver", || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let status: Value = client.get(format!("{base}/status")).send().await.ok()?.json().await.ok()?;
                (status["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let profile = std::env::temp_dir().join(format!("runnel-chromium-{}", uuid::Uuid::new_v4().simple()));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let session: Value = client
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": args}}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}"));
        Browser { _driver: driver, url: format!("{base}/session/{id}"), client, profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(answer["value"].get("error").is_none(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    async fn run(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    async fn text(&self, selector: &str) -> String {
        let script = format!("const e = document.querySelector({}); return e ? e.textContent : null;", json!(selector));
        self.run(&script).await.as_str().unwrap_or_default().to_string()
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    /// chromedriver goes with its handle; the browser it started would
    /// outlive it, so it is stopped by its profile folder, which only it uses.
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill").arg("-f").arg(format!("user-data-dir={}", self.profile.display())).status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `/ui/events` needs the admin rule: 401 without the token, a stream of
/// snapshots with it; the page itself is static and open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_traffic_in_a_real_browser() {
    let servers = Servers::from_env();
    let functions = servers.functions_dir.display().to_string();
    let host = Host::start(
        &servers,
        &[("RUNNEL_FUNCTIONS_DIR", &functions), ("ALERT_DISTRIBUTION_LIST", DISTRIBUTION_LIST), ("RUNNEL_ADMIN_TOKEN", TOKEN)],
    )
    .await;

    // The access rules.
    let page = host.client.get(host.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("<html lang=\"en\">"));
    let refused = host.client.get(host.url("/ui/events")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let mut stream = host.client.get(host.url("/ui/events")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let first = String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()).to_string();
    assert!(first.contains("event: snapshot") && first.contains("store-alert-to-email"), "{first}");
    drop(stream);

    // Traffic: a store toggled open and closed every 300 ms, and one bad record.
    let name = format!("Dashboard {}", uuid::Uuid::new_v4());
    let store = create_store(&host, &name).await;
    let traffic = {
        let (client, url, store) = (host.client.clone(), host.url(&format!("/api/stores/{}", store["id"].as_str().unwrap())), store.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let mut update = store.clone();
                update["status"] = json!(if n % 2 == 0 { "CLOSED" } else { "OPEN" });
                let _ = client.put(&url).json(&update).send().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    support::produce(&servers.kafka_brokers, "store-alerts-topic", None, "bad", b"not json", &[]).await;

    let browser = Browser::start().await;
    browser.open(&host.url("/ui")).await;
    // Without the token the page says what it needs.
    let needs = eventually(Duration::from_secs(20), "the page to ask for a token", || async {
        let text = browser.text("#connection").await;
        text.contains("not allowed").then_some(text)
    })
    .await;
    assert!(needs.contains("401"), "{needs}");
    browser.run(&format!("sessionStorage.setItem('runnel-token', {}); location.reload(); return true;", json!(TOKEN))).await;

    let handled = |text: String| text.trim().parse::<u64>().ok();
    let row = "#function-store-alert-to-email";
    let before = eventually(Duration::from_secs(30), "the dashboard to show the function", || async {
        let live = browser.text("#connection").await == "live";
        let count = handled(browser.text(&format!("{row} [data-field=handled]")).await);
        count.filter(|_| live)
    })
    .await;
    let started = Instant::now();
    let after = eventually(Duration::from_secs(30), "the handled counter to move", || async {
        handled(browser.text(&format!("{row} [data-field=handled]")).await).filter(|n| *n >= before + 3)
    })
    .await;
    println!("handled on the page: {before} → {after} in {:?}", started.elapsed());
    assert_eq!(browser.text(&format!("{row} [data-field=state]")).await, "running");
    eventually(Duration::from_secs(30), "a rate above zero", || async {
        let rate: f64 = browser.text(&format!("{row} [data-field=rate]")).await.parse().unwrap_or(0.0);
        (rate > 0.0).then_some(())
    })
    .await;
    // The dead letter, in the incidents and the counter.
    eventually(Duration::from_secs(30), "the dead letter on the page", || async {
        let incidents = browser.text("#incidents").await;
        let dead: u64 = browser.text(&format!("{row} [data-field=dead-lettered]")).await.parse().unwrap_or(0);
        (incidents.contains("dead-letter") && incidents.contains("bad input") && dead >= 1).then_some(())
    })
    .await;
    // The application's panel: recent store alerts, ours among them.
    eventually(Duration::from_secs(30), "our store among the recent alerts", || async {
        browser.text("#panels").await.contains(&name).then_some(())
    })
    .await;
    let chart = browser.run("return document.getElementById('chart').getAttribute('aria-label');").await;
    assert!(chart.as_str().unwrap().contains("now"), "{chart}");

    // A few more snapshots, so that the chart has a line to show.
    let seen = browser.run("return Number(document.body.dataset.snapshots || 0);").await.as_u64().unwrap_or(0);
    eventually(Duration::from_secs(30), "four more snapshots", || async {
        let now = browser.run("return Number(document.body.dataset.snapshots || 0);").await.as_u64().unwrap_or(0);
        (now >= seen + 4).then_some(())
    })
    .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.canonicalize().unwrap().display());

    // The replay button uses the admin API (with the page's token).
    browser
        .run("document.querySelector('#function-store-alert-to-email button').click(); return true;")
        .await;
    let result = eventually(Duration::from_secs(30), "the replay's result", || async {
        let text = browser.text("#action-result").await;
        text.contains("replayed").then_some(text)
    })
    .await;
    // The topic's dead-letter topic is shared with other tests' hosts: at least ours.
    let replayed: u64 = result
        .strip_prefix("store-alert-to-email: ")
        .and_then(|r| r.strip_suffix(" dead letter(s) replayed."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{result}"));
    assert!(replayed >= 1, "{result}");
    traffic.abort();
}
