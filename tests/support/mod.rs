//! Test support: starts the `runnel` binary against the real servers that
//! `scripts/test` started, and reads what the SMTP server received.

#![allow(dead_code)]

pub mod store_alert_flow;

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

/// The HTTP client of a test: no request waits forever (a deploy that
/// compiles a large component while other tests compile takes minutes at
/// most), so a host that never answers fails the test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(300)).build().expect("an HTTP client")
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

/// A port free at this moment. Nothing keeps it free: a server started on
/// it may find it taken (the kernel hands a freed port out again), so
/// servers are started with [`spawn_listening`], and hosts on port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether process `pid` holds the socket that listens on 127.0.0.1:`port`
/// (from /proc: a connection to the port could reach another process).
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // 0A: LISTEN; the tenth field is the socket's inode.
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A").then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    !sockets.is_empty()
        && fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| sockets.iter().any(|s| link.as_os_str() == s.as_str())))
}

/// Waits until `child` itself listens on `port`; false when it exited first.
pub async fn wait_listening(child: &mut Child, port: u16, what: &str) -> bool {
    let pid = child.id().unwrap_or_else(|| panic!("{what} is not running"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if listens(pid, port) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the server that `command` makes for a port on a free port, and
/// waits until that very process listens there; one that finds the port
/// taken meanwhile is started again on another.
pub async fn spawn_listening(what: &str, mut command: impl FnMut(u16) -> Command) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(port).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        if wait_listening(&mut child, port, what).await {
            return (child, port);
        }
    }
    panic!("{what} exited on start-up on five free ports in a row");
}

/// The command that starts a host on `servers`, on a fresh database, with
/// `env` added (or, with an empty value, removed).
/// It listens on a port the kernel picks (its log names it).
pub fn host_command(servers: &Servers, database: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnel"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNNEL_HTTP_ADDR", "127.0.0.1:0")
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

/// Starts a host that must fail (on a database of its own); returns what
/// it printed.
pub async fn start_failing(servers: &Servers, env: &[(&str, &str)]) -> String {
    let database = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut cmd = host_command(servers, &database, env);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the host gave up within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "the host started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
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
        let log = std::env::temp_dir().join(format!("runnel-{database}-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = host_command(servers, &database, env)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the runnel binary");
        let mut host = Host {
            child,
            base: String::new(),
            database,
            log,
            client: client(),
            admin_token: env.iter().find(|(k, _)| *k == "RUNNEL_ADMIN_TOKEN").map(|(_, v)| v.to_string()),
        };
        host.wait_ready().await;
        host
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the host exited ({status}) during start-up:\n{}", self.log_text());
            }
            if self.base.is_empty() {
                match self.listening_on() {
                    Some(addr) => self.base = format!("http://{addr}"),
                    None => {
                        assert!(Instant::now() < deadline, "the host did not listen in 180 s:\n{}", self.log_text());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
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
            assert!(Instant::now() < deadline, "the host was not ready in 180 s:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (up to a minute) for the host to exit; its
    /// exit status and how long it took.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        signal(self.pid(), "TERM");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the host exits within a minute of SIGTERM")
            .unwrap();
        (status, started.elapsed())
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the host is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address the host's log says it listens on.
    fn listening_on(&self) -> Option<String> {
        let log = self.log_text();
        // A text line (perhaps coloured) or a JSON one.
        // Whole lines only: the end of one being written may be missing.
        let line = log
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .find(|l| l.contains("runnel::serve") && (l.contains(" listening ") || l.contains("\"listening\"")))?;
        let rest = &line[line.find("addr")?..];
        let rest = &rest[rest.find("127.0.0.1:")?..];
        let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        (!addr.ends_with(":0")).then_some(addr)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A failing test shows the end of what its host logged.
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last {} lines of the host's log ({}) ---\n{}\n---",
                lines.len().min(80),
                self.log.display(),
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
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
    pub message_id: String,
    pub traceparent: String,
}

/// Every message in the Maildir whose subject is `subject`.
pub fn mails_with_subject(maildir: &Path, subject: &str) -> Vec<Mail> {
    mails_where(maildir, |s| s == subject)
}

/// Every message in the Maildir whose subject passes `wanted`.
pub fn mails_where(maildir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else { return Vec::new() };
    let mut mails = Vec::new();
    for entry in entries.flatten() {
        let Ok(raw) = std::fs::read(entry.path()) else { continue };
        let Ok(parsed) = mailparse::parse_mail(&raw) else { continue };
        let header = |name: &str| {
            use mailparse::MailHeaderMap;
            parsed.headers.get_first_value(name).unwrap_or_default()
        };
        if !wanted(&header("Subject")) {
            continue;
        }
        mails.push(Mail {
            from: header("From"),
            to: header("To"),
            envelope_to: header("X-RcptTo"),
            subject: header("Subject"),
            body: parsed.get_body().unwrap_or_default(),
            message_id: header("Message-ID"),
            traceparent: header("Traceparent"),
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

/// The offset `group` has committed for `topic`/`partition` (None: none yet).
pub async fn committed_offset(brokers: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, group, topic) = (brokers.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&topic, partition);
        // The group's coordinator may be slow to find on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        let committed = loop {
            match consumer.committed_offsets(list.clone(), Duration::from_secs(30)) {
                Ok(committed) => break committed,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the committed offset of {group} on {topic}/{partition}: {e}");
                    // Some errors come back at once: not a busy loop.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        match committed.find_partition(&topic, partition).map(|p| p.offset()) {
            Some(rdkafka::Offset::Offset(offset)) => Some(offset),
            _ => None,
        }
    })
    .await
    .unwrap()
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

/// A function component built by scripts/test (from `functions/`).
pub fn function(name: &str) -> Vec<u8> {
    let dir = std::env::var("RUNNEL_TEST_FUNCTIONS_DIR").expect("RUNNEL_TEST_FUNCTIONS_DIR: run the tests with scripts/test");
    let path = Path::new(&dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Host {
    /// `GET /admin/functions/{name}`'s counters of the running version.
    pub async fn counters(&self, name: &str) -> serde_json::Value {
        self.get_json(&format!("/admin/functions/{name}")).await["running"]["counters"].clone()
    }
}

/// Produces `payload` to `topic`/`partition` with `key` and `headers`.
pub async fn produce(brokers: &str, topic: &str, partition: Option<i32>, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
    send(&producer(brokers), topic, partition, key, payload, headers).await;
}

/// A producer for records sent one right after the other (connecting one
/// takes longer than sending a record): idempotent, so that a send retried
/// on a slow broker is not stored twice.
pub fn producer(brokers: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").create().unwrap()
}

/// Sends a record with `producer` and waits until the broker has it.
pub async fn send(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    use rdkafka::{
        message::{Header, OwnedHeaders},
        producer::FutureRecord,
    };
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(owned);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// A record as a test reads it back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from its start (in a new group) until `done` holds for what
/// was read, or panics after `limit`.
pub async fn read_topic(brokers: &str, topic: &str, limit: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    use rdkafka::{
        Message,
        consumer::{Consumer, StreamConsumer},
        message::Headers,
    };
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + limit;
    let mut records = Vec::new();
    while !done(&records) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out after {limit:?} reading {topic}; read {records:?}");
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else { continue };
        records.push(Record {
            partition: m.partition(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    records
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, …) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Servers of a test's own, so that it can hang, kill and restart them.
pub struct OwnServers {
    pub servers: Servers,
    pub broker: Child,
    pub database: Child,
    pub smtp: Child,
    smtp_port: u16,
    dir: PathBuf,
}

/// The servers' folder (their data and mail) goes with them.
impl Drop for OwnServers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Tansu broker on `port`, in memory.
pub fn broker_command(tansu: &str, port: u16) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(tansu);
    cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]);
    cmd
}

impl OwnServers {
    /// A broker, a document store and an SMTP sink on free ports.
    pub async fn start() -> OwnServers {
        let tansu = std::env::var("RUNNEL_TANSU_BIN").expect("RUNNEL_TANSU_BIN: run the tests with scripts/test");
        let venv = PathBuf::from(std::env::var("RUNNEL_VENV").expect("RUNNEL_VENV: run the tests with scripts/test"));
        let dir = std::env::temp_dir().join(format!("runnel-own-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["maildir/new", "maildir/cur", "maildir/tmp", "mongo"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let quiet = |cmd: &mut Command| {
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null()).kill_on_drop(true);
        };
        let (broker, kafka_port) = spawn_listening("the broker", |port| {
            let mut cmd = broker_command(&tansu, port);
            quiet(&mut cmd);
            cmd
        })
        .await;
        let (database, mongo_port) = spawn_listening("the database", |port| {
            let mut cmd = Command::new(venv.join("bin/secantusd-py"));
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--log-level", "WARNING", "--storage-path"])
                .arg(dir.join("mongo"));
            quiet(&mut cmd);
            cmd
        })
        .await;
        let (smtp, smtp_port) = spawn_listening("the SMTP server", |port| Self::smtp_command(&venv, port, &dir.join("maildir"))).await;
        OwnServers {
            servers: Servers {
                kafka_brokers: format!("127.0.0.1:{kafka_port}"),
                mongodb_uri: format!("mongodb://127.0.0.1:{mongo_port}/?directConnection=true"),
                smtp_url: format!("smtp://127.0.0.1:{smtp_port}"),
                maildir: dir.join("maildir"),
                functions_dir: std::env::var("RUNNEL_TEST_FUNCTIONS_DIR").unwrap_or_default().into(),
            },
            broker,
            database,
            smtp,
            smtp_port,
            dir,
        }
    }

    fn smtp_command(venv: &Path, port: u16, maildir: &Path) -> Command {
        let mut cmd = Command::new(venv.join("bin/python"));
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Kills the broker and starts another on its port. It keeps its data
    /// in memory, so the new one has no topics and no committed offsets: as
    /// if every topic were deleted and made again.
    pub async fn restart_broker(&mut self) {
        self.broker.kill().await.unwrap();
        let port: u16 = self.servers.kafka_brokers.rsplit(':').next().unwrap().parse().unwrap();
        let tansu = std::env::var("RUNNEL_TANSU_BIN").unwrap();
        let mut cmd = broker_command(&tansu, port);
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null()).kill_on_drop(true);
        self.broker = cmd.spawn().unwrap();
        assert!(wait_listening(&mut self.broker, port, "the broker again").await, "the broker did not start again");
    }

    /// Kills the SMTP server (its mail stays) and starts it again after `down`.
    pub async fn restart_smtp(&mut self, down: Duration) {
        self.smtp.kill().await.unwrap();
        tokio::time::sleep(down).await;
        let venv = PathBuf::from(std::env::var("RUNNEL_VENV").unwrap());
        self.smtp = Self::smtp_command(&venv, self.smtp_port, &self.servers.maildir).spawn().unwrap();
        assert!(wait_listening(&mut self.smtp, self.smtp_port, "the SMTP server again").await, "the SMTP server did not start again");
    }
}

/// Every message in the Maildir whose subject starts with `prefix`.
pub fn mails_starting(maildir: &Path, prefix: &str) -> Vec<Mail> {
    mails_where(maildir, |subject| subject.starts_with(prefix))
}
