//! Bearer JWTs from one OpenID Connect issuer: its signing keys found
//! through discovery, cached, and fetched again when a token names a key
//! the cache does not hold (at most once per [`MIN_REFETCH`]) or when the
//! cache is older than [`MAX_AGE`].
//!
//! Only asymmetric algorithms are accepted (RS*, PS*, ES256/384, EdDSA):
//! a key must be one of the issuer's, never a secret a token could name.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use serde::Deserialize;
use serde_json::Value;

/// Least time between two fetches of the keys for a key id not seen yet,
/// so that tokens naming made-up keys cannot make the host flood the
/// issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Keys older than this are fetched again (a key the issuer withdrew
/// stops being accepted within this time).
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Where tokens come from and what they must say.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// An `aud` every token must carry.
    pub audience: String,
    /// The discovery document; default `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// Dotted path of the roles claim (`roles`, `realm_access.roles`).
    pub roles_claim: String,
    /// The role that may change data.
    pub write_role: String,
    /// The role that may use the admin API (and change data).
    pub admin_role: String,
}

impl OidcSettings {
    pub fn discovery_url(&self) -> String {
        self.discovery_url
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/')))
    }
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The `sub` claim.
    pub subject: Option<String>,
    pub roles: Vec<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token is not valid (401).
    #[error("{0}")]
    Invalid(String),
    /// Its key could not be fetched from the issuer (503).
    #[error("{0}")]
    KeysUnavailable(String),
}

/// One usable key of the issuer.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

struct Keys {
    by_id: HashMap<String, Arc<Key>>,
    /// Keys the issuer publishes without an id (tried for tokens without one).
    unnamed: Vec<Arc<Key>>,
    /// The last attempt to fetch them, successful or not.
    attempted: Instant,
    /// The last successful fetch.
    fetched: Instant,
}

/// Checks bearer tokens of one issuer. Cheap to clone.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    jwks_uri: String,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// One fetch at a time; those waiting find its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Oidc {
    /// Reads the issuer's discovery document and its keys. Fails naming
    /// what could not be read, or an issuer that does not match.
    pub async fn discover(settings: OidcSettings, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let url = settings.discovery_url();
        let discovery: Discovery = get_json(&http, &url).await.map_err(|e| anyhow::anyhow!("cannot read the discovery document: {e}"))?;
        if discovery.issuer != settings.issuer {
            anyhow::bail!(
                "the discovery document at {url} is for issuer '{}', not '{}'",
                discovery.issuer,
                settings.issuer
            );
        }
        let now = Instant::now();
        let (by_id, unnamed) = fetch_keys(&http, &discovery.jwks_uri)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the issuer's keys: {e}"))?;
        if by_id.is_empty() && unnamed.is_empty() {
            tracing::warn!(jwks_uri = %discovery.jwks_uri, "the issuer publishes no signing key Runnel can use (yet)");
        }
        Ok(Oidc {
            inner: Arc::new(Inner {
                settings,
                jwks_uri: discovery.jwks_uri,
                http,
                keys: RwLock::new(Keys { by_id, unnamed, attempted: now, fetched: now }),
                fetching: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.inner.settings
    }

    /// Checks a bearer token: its signature by one of the issuer's keys,
    /// `exp` and `nbf` (with [`LEEWAY_SECS`]), `iss` and `aud`.
    pub async fn validate(&self, token: &str) -> Result<Identity, TokenError> {
        let invalid = |why: &str| TokenError::Invalid(why.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the bearer token is not a JWT"))?;
        if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(invalid("the token is signed with a shared secret (HS*); only the issuer's keys are accepted"));
        }
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let Some(key) = key else {
            return Err(invalid(match header.kid {
                Some(_) => "the token's key id is not one of the issuer's keys",
                None => "the token names no key id and no key of the issuer without one verifies it",
            }));
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.inner.settings.issuer]);
        validation.set_audience(&[&self.inner.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|e| {
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidIssuer => "the token is from another issuer",
                ErrorKind::InvalidAudience => "the token is not meant for this API (aud)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks exp, iss or aud",
                _ => "the token is not valid",
            })
        })?;
        let claims = claims.claims;
        Ok(Identity {
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_string),
            roles: roles(&claims, &self.inner.settings.roles_claim),
        })
    }

    /// The key a token names, fetching the keys again if it is unknown (or
    /// the cache is old) and the last attempt is long enough ago.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<Arc<Key>>, TokenError> {
        let (found, stale) = self.cached(kid, alg);
        if found.is_some() && !stale {
            return Ok(found);
        }
        let _one_at_a_time = self.inner.fetching.lock().await;
        // Another request may have fetched them meanwhile.
        let (again, stale) = self.cached(kid, alg);
        if again.is_some() && !stale {
            return Ok(again);
        }
        let attempted = self.inner.keys.read().unwrap_or_else(|e| e.into_inner()).attempted;
        if attempted.elapsed() < MIN_REFETCH {
            return Ok(again);
        }
        let now = Instant::now();
        match fetch_keys(&self.inner.http, &self.inner.jwks_uri).await {
            Ok((by_id, unnamed)) => {
                tracing::info!(keys = by_id.len() + unnamed.len(), "fetched the issuer's signing keys");
                *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) =
                    Keys { by_id, unnamed, attempted: now, fetched: now };
                Ok(self.cached(kid, alg).0)
            }
            Err(e) => {
                self.inner.keys.write().unwrap_or_else(|e| e.into_inner()).attempted = now;
                tracing::warn!(jwks_uri = %self.inner.jwks_uri, "cannot fetch the issuer's signing keys: {e}");
                // Old keys still verify what they signed.
                match again {
                    Some(key) => Ok(Some(key)),
                    None => Err(TokenError::KeysUnavailable(format!("cannot fetch the issuer's signing keys: {e}"))),
                }
            }
        }
    }

    /// The cached key for `kid` (or, without one, the first unnamed key
    /// of the algorithm's family), and whether the cache is due a refresh.
    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> (Option<Arc<Key>>, bool) {
        let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = match kid {
            Some(kid) => keys.by_id.get(kid).cloned(),
            None => keys.unnamed.iter().find(|k| k.algorithms.contains(&alg)).cloned(),
        };
        (key, keys.fetched.elapsed() > MAX_AGE)
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, String> {
    let response = http.get(url).send().await.map_err(|e| with_causes(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let body = response.bytes().await.map_err(|e| with_causes(&e))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} did not answer the expected JSON: {e}"))
}

/// reqwest's error (which names the URL) with its causes.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type KeySet = (HashMap<String, Arc<Key>>, Vec<Arc<Key>>);

/// The issuer's signing keys Runnel can use; others (encryption keys,
/// shared secrets, unknown types) are skipped, each with a debug line.
async fn fetch_keys(http: &reqwest::Client, jwks_uri: &str) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = get_json(http, jwks_uri).await?;
    let mut by_id = HashMap::new();
    let mut unnamed = Vec::new();
    for value in set.keys {
        match usable(value) {
            Ok((kid, key)) => match kid {
                Some(kid) => {
                    by_id.insert(kid, Arc::new(key));
                }
                None => unnamed.push(Arc::new(key)),
            },
            Err(why) => tracing::debug!("skipping a key of the issuer: {why}"),
        }
    }
    Ok((by_id, unnamed))
}

fn usable(value: Value) -> Result<(Option<String>, Key), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a key Runnel knows: {e}"))?;
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return Err("not a signing key".into());
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("an elliptic curve other than P-256 and P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        _ => return Err("a shared secret or an unsupported key type".into()),
    };
    // A key that names its algorithm verifies that one only.
    let algorithms = match jwk.common.key_algorithm {
        Some(named) => {
            let named = Algorithm::try_from(named).map_err(|_| "an algorithm Runnel does not accept".to_string())?;
            if !family.contains(&named) {
                return Err("its algorithm does not fit its type".into());
            }
            vec![named]
        }
        None => family,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable: {e}"))?;
    Ok((jwk.common.key_id.clone(), Key { decoding, algorithms }))
}

/// The roles at `path` (dotted) in the claims: an array of strings, or one
/// string of space-separated roles.
fn roles(claims: &Value, path: &str) -> Vec<String> {
    let mut at = claims;
    for part in path.split('.') {
        match at.get(part) {
            Some(next) => at = next,
            None => return Vec::new(),
        }
    }
    match at {
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_found_by_path_as_arrays_or_strings() {
        let claims = json!({"roles": ["ROLE_USER", 3], "realm_access": {"roles": ["ROLE_ADMIN"]}, "scope": "a b"});
        assert_eq!(roles(&claims, "roles"), ["ROLE_USER"]);
        assert_eq!(roles(&claims, "realm_access.roles"), ["ROLE_ADMIN"]);
        assert_eq!(roles(&claims, "scope"), ["a", "b"]);
        assert!(roles(&claims, "realm_access.nothing").is_empty());
        assert!(roles(&claims, "realm_access").is_empty());
    }

    #[test]
    fn only_asymmetric_signing_keys_are_used() {
        let secret = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        assert!(usable(secret).is_err());
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "e"});
        let (kid, key) = usable(ed.clone()).unwrap();
        assert_eq!(kid.as_deref(), Some("e"));
        assert_eq!(key.algorithms, [Algorithm::EdDSA]);
        let mut encryption = ed.clone();
        encryption["use"] = json!("enc");
        assert!(usable(encryption).is_err());
        let mut mismatched = ed;
        mismatched["alg"] = json!("RS256");
        assert!(usable(mismatched).is_err());
    }
}
