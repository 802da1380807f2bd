//! The API behind OpenID Connect: an issuer served here on loopback (its
//! discovery document and JWKS, with keys made in the test), tokens signed
//! with them, and what the host lets through: 200 / 401 / 403, the admin
//! token still working for automation, and a key rotation picked up
//! without a restart.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, routing::get};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, PublicKeyUse},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Host, Servers, start_failing};

const AUDIENCE: &str = "runnel-api";
const ADMIN_TOKEN: &str = "automation-token-0123456789";

/// A signing key of the issuer (or of someone else).
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl Key {
    fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let encoding = EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        Key::new(kid, Algorithm::RS256, encoding)
    }

    fn ec(kid: &str) -> Key {
        use p256::pkcs8::EncodePrivateKey;
        let private = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let encoding = EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
        Key::new(kid, Algorithm::ES256, encoding)
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Key {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Key { kid: kid.to_string(), alg, encoding, jwk }
    }

    /// A token with `claims` on top of valid ones from `issuer`.
    fn token(&self, issuer: &str, claims: Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut all = json!({"iss": issuer, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300});
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &all, &self.encoding).unwrap()
    }
}

/// An OpenID Connect issuer on loopback: its discovery document and its
/// keys, which the test changes; counts the key fetches.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Issuer {
    /// `claimed`: the issuer its discovery document names (normally its own URL).
    async fn start(claimed: Option<&str>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let url = format!("{base}/realms/runnel");
        let keys: Arc<Mutex<Vec<Jwk>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({
            "issuer": claimed.unwrap_or(&url),
            "jwks_uri": format!("{url}/protocol/openid-connect/certs"),
            "token_endpoint": format!("{url}/protocol/openid-connect/token"),
        });
        let (served, counted) = (keys.clone(), fetches.clone());
        let app = Router::new()
            .route("/realms/runnel/.well-known/openid-configuration", get(move || async move { Json(discovery) }))
            .route(
                "/realms/runnel/protocol/openid-connect/certs",
                get(move || async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"keys": *served.lock().unwrap()}))
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { url, keys, fetches, server }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn env(issuer: &Issuer) -> Vec<(&'static str, String)> {
    vec![
        ("RUNNEL_OIDC_ISSUER", issuer.url.clone()),
        ("RUNNEL_OIDC_AUDIENCE", AUDIENCE.to_string()),
        ("RUNNEL_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
    content_type: String,
}

async fn call(host: &Host, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut request = host.client.request(method, host.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (status, challenge, content_type) = (r.status(), header("www-authenticate"), header("content-type").unwrap_or_default());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer { status, challenge, body, content_type }
}

fn store() -> Value {
    json!({"name": format!("Auth {}", uuid::Uuid::new_v4().simple()), "address": "1 Main Street", "status": "OPEN"})
}

/// Refused with the right status, a problem+json body and, for 401 and
/// 403, a Bearer challenge (with `error` when a token was sent).
fn refused(answer: &Answer, status: StatusCode, error: Option<&str>, says: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status.as_u16());
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains(says), "'{detail}' does not say '{says}'");
    let challenge = answer.challenge.as_deref().expect("a WWW-Authenticate challenge");
    assert!(challenge.starts_with("Bearer realm=\"runnel\""), "{challenge}");
    match error {
        Some(error) => assert!(challenge.contains(&format!("error=\"{error}\"")), "{challenge}"),
        None => assert!(!challenge.contains("error="), "{challenge}"),
    }
}

/// 200 for valid tokens with the role a route needs; 401 for no token, an
/// expired or not-yet-valid one, another issuer or audience, a signature by
/// a key the issuer does not have, a shared-secret token naming the
/// issuer's key, and anything that is not a JWT; 403 for the wrong role.
/// The admin token still opens `/admin`; health, metrics and the OpenAPI
/// document stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_issuer_with_the_right_role_get_in() {
    let servers = Servers::from_env();
    let issuer = Issuer::start(None).await;
    let key = Key::rsa("key-1");
    issuer.publish(&[&key]);
    let env = env(&issuer);
    let host = Host::start(&servers, &refs(&env)).await;
    let iss = issuer.url.as_str();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    let reader = key.token(iss, json!({"roles": []}));
    let writer = key.token(iss, json!({"roles": ["ROLE_USER"]}));
    let admin = key.token(iss, json!({"roles": ["ROLE_USER", "ROLE_ADMIN"]}));
    use reqwest::Method as M;

    // Reads: any valid token.
    let a = call(&host, M::GET, "/api/stores", Some(&reader), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Writes: the write role.
    let created = call(&host, M::POST, "/api/stores", Some(&writer), Some(store())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let path = format!("/api/stores/{}", created.body["id"].as_str().unwrap());
    let a = call(&host, M::GET, &path, Some(&reader), None).await;
    assert_eq!((a.status, &a.body["name"]), (StatusCode::OK, &created.body["name"]));
    let a = call(&host, M::POST, "/api/stores", Some(&reader), Some(store())).await;
    refused(&a, StatusCode::FORBIDDEN, Some("insufficient_scope"), "ROLE_USER");
    let a = call(&host, M::DELETE, &path, Some(&reader), None).await;
    refused(&a, StatusCode::FORBIDDEN, Some("insufficient_scope"), "ROLE_USER");
    let a = call(&host, M::POST, "/api/stores", Some(&admin), Some(store())).await;
    assert_eq!(a.status, StatusCode::CREATED, "the admin role may write too: {}", a.body);

    // The admin API: the admin role, or the admin token.
    let a = call(&host, M::GET, "/admin/functions", Some(&admin), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(&host, M::GET, "/admin/functions", Some(ADMIN_TOKEN), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(&host, M::GET, "/admin/functions", Some(&writer), None).await;
    refused(&a, StatusCode::FORBIDDEN, Some("insufficient_scope"), "ROLE_ADMIN");
    let a = call(&host, M::GET, "/admin/functions", None, None).await;
    refused(&a, StatusCode::UNAUTHORIZED, None, "Bearer");

    // 401s: each a different reason, no data.
    let stranger = Key::rsa("key-1"); // the issuer's key id, someone else's key
    let secret = EncodingKey::from_secret(b"a shared secret anyone could pick");
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("key-1".into());
    let hs = jsonwebtoken::encode(&hs_header, &json!({"iss": iss, "aud": AUDIENCE, "exp": now + 300, "roles": ["ROLE_ADMIN"]}), &secret).unwrap();
    let cases: Vec<(&str, Option<String>, &str, Option<&str>)> = vec![
        ("no token", None, "Bearer", None),
        ("expired", Some(key.token(iss, json!({"exp": now - 120, "iat": now - 600}))), "expired", Some("invalid_token")),
        ("not yet valid", Some(key.token(iss, json!({"nbf": now + 600}))), "not valid yet", Some("invalid_token")),
        ("another issuer", Some(key.token("http://127.0.0.1:1/realms/other", json!({}))), "another issuer", Some("invalid_token")),
        ("another audience", Some(key.token(iss, json!({"aud": "someone-else"}))), "not meant for this API", Some("invalid_token")),
        ("no audience", Some(key.token(iss, json!({"aud": null}))), "", Some("invalid_token")),
        ("bad signature", Some(stranger.token(iss, json!({"roles": ["ROLE_ADMIN"]}))), "signature", Some("invalid_token")),
        ("shared secret", Some(hs), "shared secret", Some("invalid_token")),
        ("not a JWT", Some("not-a-jwt".into()), "not a JWT", Some("invalid_token")),
    ];
    for (case, token, says, error) in &cases {
        for (method, path) in [(M::GET, "/api/stores"), (M::POST, "/api/stores")] {
            let a = call(&host, method.clone(), path, token.as_deref(), Some(store())).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{case}: {method} {path}: {}", a.body);
            refused(&a, StatusCode::UNAUTHORIZED, *error, says);
        }
    }
    // "Basic" is not a bearer token.
    let r = host.client.get(host.url("/api/stores")).basic_auth("user", Some("pass")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The admin token is for the admin API only.
    let a = call(&host, M::GET, "/api/stores", Some(ADMIN_TOKEN), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Nothing the refused writes sent was stored.
    let a = call(&host, M::GET, "/api/stores?size=100", Some(&reader), None).await;
    assert_eq!(a.body.as_array().unwrap().len(), 2, "{}", a.body);

    for open in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        let r = host.client.get(host.url(open)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open}");
    }
    let log = host.log_text();
    assert!(log.contains("the API accepts this issuer's tokens"), "{log}");
    assert!(!log.contains(&reader) && !log.contains(ADMIN_TOKEN), "a token was logged");
}

/// The issuer rotates its key: a token of the new key is accepted without
/// a restart (the keys are fetched again once), the withdrawn key's tokens
/// are refused, and tokens naming made-up keys do not make the host fetch
/// the keys more than once per bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_is_picked_up_without_a_restart() {
    let servers = Servers::from_env();
    let issuer = Issuer::start(None).await;
    let old = Key::rsa("2026-old");
    issuer.publish(&[&old]);
    let env = env(&issuer);
    let host = Host::start(&servers, &refs(&env)).await;
    let iss = issuer.url.as_str();
    let get = |token: String| {
        let host = &host;
        async move { call(host, reqwest::Method::GET, "/api/stores", Some(&token), None).await }
    };
    assert_eq!(get(old.token(iss, json!({}))).await.status, StatusCode::OK);
    assert_eq!(issuer.fetches(), 1, "the keys are read once at start");

    // The issuer rotates: a new key (another algorithm too), the old one withdrawn.
    let new = Key::ec("2026-new");
    issuer.publish(&[&new]);
    // The host fetched its keys at start; a fetch for an unknown key waits
    // out the bound since the last one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let a = get(new.token(iss, json!({}))).await;
    assert_eq!(a.status, StatusCode::OK, "the new key is not accepted: {}", a.body);
    assert_eq!(issuer.fetches(), 2);
    let a = get(new.token(iss, json!({}))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(issuer.fetches(), 2, "a known key needs no fetch");
    let a = get(old.token(iss, json!({}))).await;
    refused(&a, StatusCode::UNAUTHORIZED, Some("invalid_token"), "not one of the issuer's keys");

    // Tokens naming keys nobody has: refused, and at most one fetch per bound.
    let before = issuer.fetches();
    for n in 0..20 {
        let made_up = Key::ec(&format!("made-up-{n}"));
        let a = get(made_up.token(iss, json!({}))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert!(issuer.fetches() - before <= 1, "{} fetches for 20 unknown keys", issuer.fetches() - before);
    println!("key fetches: {} in all (start, rotation, at most one for 20 unknown keys)", issuer.fetches());
}

/// Start-up: an issuer that cannot be reached, or whose discovery document
/// names another issuer, stops the host naming `RUNNEL_OIDC_ISSUER`; an
/// open API refuses a non-loopback address unless `RUNNEL_INSECURE=1`; an
/// open API is announced in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_checks_the_issuer_and_refuses_an_open_api_off_loopback() {
    let servers = Servers::from_env();
    let unreachable = [("RUNNEL_OIDC_ISSUER", "http://127.0.0.1:9/realms/runnel"), ("RUNNEL_OIDC_AUDIENCE", AUDIENCE)];
    let stderr = start_failing(&servers, &unreachable).await;
    assert!(stderr.contains("RUNNEL_OIDC_ISSUER: cannot read the discovery document"), "{stderr}");

    let liar = Issuer::start(Some("https://elsewhere.example/realms/runnel")).await;
    let claimed = [("RUNNEL_OIDC_ISSUER", liar.url.as_str()), ("RUNNEL_OIDC_AUDIENCE", AUDIENCE)];
    let stderr = start_failing(&servers, &claimed).await;
    assert!(stderr.contains("RUNNEL_OIDC_ISSUER") && stderr.contains("elsewhere.example"), "{stderr}");

    let port = support::free_port();
    let everywhere = format!("0.0.0.0:{port}");
    let stderr = start_failing(&servers, &[("RUNNEL_HTTP_ADDR", &everywhere)]).await;
    assert!(stderr.contains("RUNNEL_HTTP_ADDR") && stderr.contains("RUNNEL_INSECURE=1"), "{stderr}");
    let stderr = start_failing(&servers, &[("RUNNEL_OIDC_ISSUER", "http://127.0.0.1:9/r")]).await;
    assert!(stderr.contains("RUNNEL_OIDC_AUDIENCE"), "{stderr}");

    let open = Host::start(&servers, &[]).await;
    assert!(open.log_text().contains("the /api routes are open"), "{}", open.log_text());
}

/// compose.yaml's Keycloak realm gives Runnel what it is configured to
/// check: the audience, the roles claim, both roles, and a demo user of each.
#[test]
fn the_compose_realm_matches_the_hosts_settings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    let setting = |name: &str| {
        compose
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("compose.yaml does not set {name}"))
            .trim()
            .to_string()
    };
    let realm: Value = serde_json::from_str(&std::fs::read_to_string(root.join("compose/keycloak/runnel-realm.json")).unwrap()).unwrap();
    assert!(setting("RUNNEL_OIDC_ISSUER").ends_with(&format!("/realms/{}", realm["realm"].as_str().unwrap())));
    assert!(setting("RUNNEL_OIDC_DISCOVERY_URL").contains(&format!("/realms/{}/", realm["realm"].as_str().unwrap())));
    let mappers = realm["clients"][0]["protocolMappers"].as_array().unwrap();
    let config = |kind: &str| &mappers.iter().find(|m| m["protocolMapper"] == kind).unwrap()["config"];
    assert_eq!(config("oidc-audience-mapper")["included.custom.audience"], setting("RUNNEL_OIDC_AUDIENCE").as_str());
    assert_eq!(config("oidc-usermodel-realm-role-mapper")["claim.name"], setting("RUNNEL_OIDC_ROLES_CLAIM").as_str());
    let roles: Vec<&str> = realm["roles"]["realm"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(roles, ["ROLE_USER", "ROLE_ADMIN"], "the host's default write and admin roles");
    let users = realm["users"].as_array().unwrap();
    for (user, roles) in [("user", json!(["ROLE_USER"])), ("admin", json!(["ROLE_USER", "ROLE_ADMIN"]))] {
        let found = users.iter().find(|u| u["username"] == user).unwrap();
        assert_eq!(found["realmRoles"], roles);
        // Keycloak refuses a password grant for a user whose profile is incomplete.
        for field in ["email", "firstName", "lastName"] {
            assert!(found[field].is_string(), "{user} has no {field}");
        }
    }
}
