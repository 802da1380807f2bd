//! Test support: starts the `runnel` binary against the real servers that
//! `scripts/test` started, and reads what the SMTP server received.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

/// Where the servers of this test run are, from the environment that
/// `scripts/test` sets.
pub struct Servers {
    pub kafka_brokers: String,
    pub mongodb_uri: String,
    pub smtp_url: String,
    pub maildir: PathBuf,
    pub functions_dir: PathBuf,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests with scripts/test, which starts the servers")
    })
}

impl Servers {
    pub fn from_env() -> Self {
        Servers {
            kafka_brokers: required("RUNNEL_KAFKA_BROKERS"),
            mongodb_uri: required("RUNNEL_MONGODB_URI"),
            smtp_url: required("RUNNEL_SMTP_URL"),
            maildir: required("RUNNEL_MAILDIR").into(),
            functions_dir: required("RUNNEL_TEST_FUNCTIONS_DIR").into(),
        }
    }
}

/// A running host, stopped (SIGTERM, then kill) when dropped.
pub struct Host {
    child: Child,
    pub base: String,
    pub database: String,
    pub log: PathBuf,
    pub client: reqwest::Client,
    /// The admin token the host was started with.
    pub admin_token: Option<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The command that starts a host on `servers`, on a fresh database, with
/// `env` added (or, with an empty value, removed).
pub fn host_command(servers: &Servers, database: &str, port: u16, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNNEL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUNNEL_KAFKA_BROKERS", &servers.kafka_brokers)
        .env("RUNNEL_MONGODB_URI", &servers.mongodb_uri)
        .env("RUNNEL_MONGODB_DATABASE", database)
        .env("RUNNEL_SMTP_URL", &servers.smtp_url)
        .env("RUNNEL_MAIL_FROM", "runnel-test@example.com")
        .env("RUNNEL_LOG", "info,runnel=debug");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

impl Host {
    /// Starts a host and waits until its API answers (and, when functions
    /// are deployed, until every trigger is running).
    pub async fn start(servers: &Servers, env: &[(&str, &str)]) -> Host {
        Host::start_on(servers, &format!("test_{}", uuid::Uuid::new_v4().simple()), env).await
    }

    /// Starts a host on `database` (several hosts may share one).
    pub async fn start_on(servers: &Servers, database: &str, env: &[(&str, &str)]) -> Host {
        let database = database.to_string();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("runnel-{database}-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = host_command(servers, &database, port, env)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the runnel binary");
        let mut host = Host {
            child,
            base: format!("http://127.0.0.1:{port}"),
            database,
            log,
            client: reqwest::Client::new(),
            admin_token: env.iter().find(|(k, _)| *k == "RUNNEL_ADMIN_TOKEN").map(|(_, v)| v.to_string()),
        };
        host.wait_ready().await;
        host
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the host exited ({status}) during start-up:\n{}", self.log_text());
            }
            let mut request = self.client.get(self.url("/admin/functions"));
            if let Some(token) = &self.admin_token {
                request = request.bearer_auth(token);
            }
            if let Ok(r) = request.send().await
                && r.status().is_success()
            {
                if let Ok(functions) = r.json::<Vec<serde_json::Value>>().await
                    && functions.iter().all(|f| f["state"] == "running" || f["state"] == "undeployed")
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the host was not ready in 60 s:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM lets the host leave its consumer group cleanly.
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            for _ in 0..100 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.start_kill();
    }
}

/// A message as the SMTP server stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: String,
    pub envelope_to: String,
    pub subject: String,
    pub body: String,
}

/// Every message in the Maildir whose subject is `subject`.
pub fn mails_with_subject(maildir: &Path, subject: &str) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else { return Vec::new() };
    let mut mails = Vec::new();
    for entry in entries.flatten() {
        let Ok(raw) = std::fs::read(entry.path()) else { continue };
        let Ok(parsed) = mailparse::parse_mail(&raw) else { continue };
        let header = |name: &str| {
            use mailparse::MailHeaderMap;
            parsed.headers.get_first_value(name).unwrap_or_default()
        };
        if header("Subject") != subject {
            continue;
        }
        mails.push(Mail {
            from: header("From"),
            to: header("To"),
            envelope_to: header("X-RcptTo"),
            subject: header("Subject"),
            body: parsed.get_body().unwrap_or_default(),
        });
    }
    mails
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Host {
    /// Sends `body` as JSON with `method`; returns the status and the JSON
    /// answer (`Null` when there is none).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&serde_json::Value>) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// POSTs `body` to `path`; asserts 201 and returns the created resource.
    pub async fn create(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, created) = self.send(reqwest::Method::POST, path, Some(&body)).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "POST {path}: {created}");
        created
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, value) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {value}");
        value
    }
}

/// A fixture component built by scripts/test.
pub fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var("RUNNEL_TEST_FIXTURES_DIR").expect("RUNNEL_TEST_FIXTURES_DIR: run the tests with scripts/test");
    let path = Path::new(&dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Host {
    /// `PUT /admin/functions/{name}` with a manifest and a component.
    pub async fn deploy(&self, name: &str, manifest: &str, component: &[u8]) -> (reqwest::StatusCode, serde_json::Value) {
        let form = reqwest::multipart::Form::new()
            .part("manifest", reqwest::multipart::Part::text(manifest.to_string()))
            .part("component", reqwest::multipart::Part::bytes(component.to_vec()));
        let r = self.client.put(self.url(&format!("/admin/functions/{name}"))).multipart(form).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
}

/// A manifest for the `recorder` fixture: it records into `collection`,
/// labelled `label`, from `topic` in `group`.
pub fn recorder_manifest(name: &str, topic: &str, group: &str, collection: &str, label: &str) -> String {
    format!(
        "name = '{name}'\n[trigger.kafka]\ntopic = '{topic}'\ngroup = '{group}'\n\
         [capabilities.documents]\nwrite = ['{collection}']\n\
         [capabilities.config.collection]\nvalue = '{collection}'\n[capabilities.config.label]\nvalue = '{label}'\n"
    )
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Documents of `collection` in `database`, as JSON.
pub async fn documents(mongodb_uri: &str, database: &str, collection: &str) -> Vec<serde_json::Value> {
    use futures::TryStreamExt;
    let client = mongodb::Client::with_uri_str(mongodb_uri).await.unwrap();
    let docs: Vec<mongodb::bson::Document> =
        client.database(database).collection(collection).find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    docs.into_iter().map(|d| mongodb::bson::Bson::Document(d).into_relaxed_extjson()).collect()
}

/// The `p`-th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
