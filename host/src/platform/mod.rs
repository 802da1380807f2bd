//! The platform: everything that runs functions, and knows nothing of the
//! application whose data they work on (nothing here imports
//! [`crate::app`]; a unit test checks it).
//!
//! | module | concern |
//! |---|---|
//! | [`runtime`] | wasmtime: compiling components, running a message through a fresh instance |
//! | [`capabilities`] | what a function can reach, one module per WIT interface |
//! | [`journal`] | capability calls per record, so that a redelivered record's effects happen once |
//! | [`kafka`] | topics, the producer, the trigger that feeds a deployment |
//! | [`outbox`] | events stored with the change they announce, and the relay that publishes them |
//! | [`deployments`] | manifests, versions in the database, the registry of supervised triggers |
//! | [`admin`] | the `/admin` HTTP API |
//! | [`auth`] | who may call what: OpenID Connect bearer tokens, roles, the admin token |
//! | [`dashboard`] | `/ui`: the live dashboard (server-sent events) |
//! | [`health`] | `/health/live` and `/health/ready` |
//! | [`metrics`] | `/metrics`: Prometheus counters, histograms and gauges |
//! | [`http`] | problem+json, request parsing, routes with their OpenAPI description |
//! | [`storage`] | the database connection |
//! | [`redact`] | secrets hidden from logs, errors and API output |
//! | [`trace`] | W3C trace context from an HTTP request through Kafka to a function's log lines and mail |

pub mod admin;
pub mod auth;
pub mod capabilities;
pub mod dashboard;
pub mod deployments;
pub mod health;
pub mod http;
pub mod journal;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod redact;
pub mod runtime;
pub mod sandbox;
pub mod storage;
pub mod trace;

#[cfg(test)]
mod tests {
    /// The platform never reaches into the application.
    #[test]
    fn the_platform_does_not_import_the_application() {
        fn walk(dir: &std::path::Path, needles: &[String], found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, needles, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (n, line) in text.lines().enumerate() {
                        let code = line.split("//").next().unwrap_or("");
                        if needles.iter().any(|n| code.contains(n.as_str())) {
                            found.push(format!("{}:{}: {line}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        let needles = [["crate", "::", "app"].concat(), ["runnel", "::", "app"].concat(), ["super", "::", "app"].concat()];
        let mut found = Vec::new();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/platform");
        walk(&dir, &needles, &mut found);
        assert!(found.is_empty(), "the platform imports the application:\n{}", found.join("\n"));
    }
}
