//! What the benchmarks share: the settings `scripts/bench` passes, a host
//! started as a process, and the figures' formatting.

#![allow(dead_code)]

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench"))
}

/// A file of one of the folders `scripts/bench` builds into.
pub fn read(dir: &str, file: &str) -> Vec<u8> {
    let path = Path::new(&env(dir)).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `run` `n` times, timing each run alone into `times`.
pub async fn time_each(n: usize, times: &mut Vec<Duration>, mut run: impl AsyncFnMut()) {
    times.reserve(n);
    for _ in 0..n {
        let started = Instant::now();
        run().await;
        times.push(started.elapsed());
    }
}

/// The `p`-th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.1} µs") }
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The release host, started as a process against the bench's servers;
/// killed when dropped.
pub struct BenchHost {
    child: tokio::process::Child,
    pub base: String,
    pub database: String,
    pub client: reqwest::Client,
}

impl BenchHost {
    /// Starts a host on `database` with `vars` added, and waits until it
    /// answers and every function it has runs. How long that took.
    pub async fn start(database: &str, vars: &[(&str, &str)]) -> (BenchHost, Duration) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = Instant::now();
        let mut command = tokio::process::Command::new(env("RUNNEL_BENCH_HOST"));
        command
            .env("RUNNEL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUNNEL_MONGODB_DATABASE", database)
            .env("RUNNEL_LOG", std::env::var("RUNNEL_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in vars {
            command.env(k, v);
        }
        let child = command.spawn().unwrap();
        let host = BenchHost { child, base: format!("http://127.0.0.1:{port}"), database: database.into(), client: reqwest::Client::new() };
        loop {
            if let Ok(r) = host.client.get(host.url("/admin/functions")).send().await
                && let Ok(functions) = r.json::<Vec<Value>>().await
                && functions.iter().all(|f| f["state"] == "running" || f["state"] == "undeployed")
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "the host did not start");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = started.elapsed();
        (host, ready)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the host runs")
    }

    /// The CPU time the host has used, user and system, all its threads.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id().expect("the host runs"))
    }

    /// The host's resident set size, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let pid = self.child.id().expect("the host runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Where the resident memory is, from `/proc/<pid>/smaps`: MiB by kind
    /// of mapping (the wasm pool is the only anonymous mapping of a GiB or
    /// more; glibc's thread arenas start at a multiple of 64 MiB).
    pub fn rss_breakdown(&self) -> Vec<(&'static str, f64)> {
        let pid = self.child.id().expect("the host runs");
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut kinds: Vec<(&'static str, f64)> =
            ["wasm pool", "malloc heap", "malloc arenas", "code and files", "stacks", "other anonymous"].map(|k| (k, 0.0)).to_vec();
        let mut kind = "other anonymous";
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
                let (start, end) = fields[0].split_once('-').unwrap();
                let start = u64::from_str_radix(start, 16).unwrap_or(0);
                let size = u64::from_str_radix(end, 16).unwrap_or(0).saturating_sub(start);
                let path = fields.get(5).copied().unwrap_or("");
                kind = match path {
                    "[heap]" => "malloc heap",
                    p if p.starts_with("[stack") => "stacks",
                    p if p.starts_with('/') => "code and files",
                    "" if size >= 1 << 30 => "wasm pool",
                    // glibc aligns its thread arenas to their 64 MiB reservation.
                    "" if size <= 64 << 20 && start % (64 << 20) == 0 => "malloc arenas",
                    _ => "other anonymous",
                };
            } else if fields.first() == Some(&"Rss:") {
                let kib: f64 = fields[1].parse().unwrap_or(0.0);
                kinds.iter_mut().find(|(k, _)| *k == kind).unwrap().1 += kib / 1024.0;
            }
        }
        kinds
    }

    pub async fn deploy(&self, name: &str, manifest: &str, component: &[u8]) {
        let form = reqwest::multipart::Form::new()
            .part("manifest", reqwest::multipart::Part::text(manifest.to_string()))
            .part("component", reqwest::multipart::Part::bytes(component.to_vec()));
        let r = self.client.put(self.url(&format!("/admin/functions/{name}"))).multipart(form).send().await.unwrap();
        assert!(r.status().is_success(), "deploy {name}: {} {}", r.status(), r.text().await.unwrap());
    }

    pub async fn undeploy(&self, name: &str) {
        let r = self.client.delete(self.url(&format!("/admin/functions/{name}"))).send().await.unwrap();
        assert!(r.status().is_success(), "undeploy {name}: {}", r.status());
    }

    /// `name`'s counters here, once it runs.
    pub async fn counters(&self, name: &str) -> Option<Counters> {
        let r = self.client.get(self.url(&format!("/admin/functions/{name}"))).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        let counters = &v["running"]["counters"];
        let get = |name: &str| counters[name].as_u64().unwrap_or(0);
        (v["state"] == "running").then(|| Counters {
            handled: get("handled"),
            assignments: get("assignments"),
            revocations: get("revocations"),
        })
    }

    /// Records `name` handled here, from the host's `/metrics` (kept in
    /// memory: reading it touches no database, where the admin API reads
    /// the function's deployment from it).
    pub async fn handled_in_metrics(&self, name: &str) -> Option<u64> {
        let text = self.client.get(self.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let label = format!("function=\"{name}\"");
        let handled = text
            .lines()
            .filter(|l| l.starts_with("runnel_records_handled_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
            .sum::<f64>();
        Some(handled as u64)
    }

    /// Records `name` handled here, once it runs.
    pub async fn handled(&self, name: &str) -> Option<u64> {
        self.counters(name).await.map(|c| c.handled)
    }
}

/// A function's counters, as a bench reads them.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub handled: u64,
    pub assignments: u64,
    pub revocations: u64,
}

impl std::ops::Add for Counters {
    type Output = Counters;
    fn add(self, o: Counters) -> Counters {
        Counters {
            handled: self.handled + o.handled,
            assignments: self.assignments + o.assignments,
            revocations: self.revocations + o.revocations,
        }
    }
}

/// The CPU time process `pid` has used, user and system, from
/// `/proc/<pid>/stat` (in the kernel's 10 ms ticks; a no-op run uses ~100).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's name, which may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// A measured rate, and the partitions the consumers lost meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub rate: f64,
    /// The CPU time of the hosts per record, in µs, from the assignment to
    /// the last record: less swayed by the machine's other load than `rate`.
    pub cpu_us: f64,
    /// Revocations from the first assignment to the last record: a group
    /// member losing its partitions mid-run (a missed heartbeat, a
    /// rebalance) shows here.
    pub revocations: u64,
}

/// Records per second `hosts` handled of `n` more records for `name`, from
/// its consumer's next partition assignment (the group's join is left out,
/// fetching is not) to the last record; `from` is the counters before.
pub async fn rate_until_handled(hosts: &[&BenchHost], name: &str, from: Counters, n: u64) -> Measured {
    let total = || async {
        let mut sum = Counters::default();
        for host in hosts {
            sum = sum + host.counters(name).await.unwrap_or_default();
        }
        sum
    };
    // While records flow, what was handled is read from /metrics (counted
    // per host and version since the host started), not from the admin API,
    // which reads the function's deployment from the database each time;
    // nothing of these `n` is handled before the assignment waited for here.
    let metrics_handled = || async {
        let mut handled = 0;
        for host in hosts {
            handled += host.handled_in_metrics(name).await.unwrap_or(0);
        }
        handled
    };
    let wanted = metrics_handled().await + n;
    let deadline = Instant::now() + Duration::from_secs(900);
    let cpu = || hosts.iter().map(|host| host.cpu_seconds()).sum::<f64>();
    let (assigned, at_assignment, cpu_at_assignment) = loop {
        let now = total().await;
        if now.assignments > from.assignments {
            break (Instant::now(), now, cpu());
        }
        assert!(Instant::now() < deadline, "{name}: never assigned");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    loop {
        let handled = metrics_handled().await;
        if handled >= wanted {
            let rate = n as f64 / assigned.elapsed().as_secs_f64();
            let cpu_us = (cpu() - cpu_at_assignment) * 1e6 / n as f64;
            let now = total().await;
            return Measured { rate, cpu_us, revocations: now.revocations - at_assignment.revocations };
        }
        assert!(Instant::now() < deadline, "{name}: {} of {n} records handled", n.saturating_sub(wanted - handled));
        // Every 10 ms: at most 0.4 % on a 2.5 s run.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
