//! Who may call what.
//!
//! | routes | without `RUNNEL_OIDC_ISSUER` | with it |
//! |---|---|---|
//! | `/api` reads (GET, HEAD, OPTIONS) | open | any valid token of the issuer |
//! | `/api` writes | open | a token with the write role (or the admin role) |
//! | `/admin`, `/ui` data | the admin token, else loopback clients only | a token with the admin role, or the admin token |
//! | `/health`, `/metrics`, `/openapi.json` | open | open |
//!
//! Missing or invalid credentials answer 401 with a `WWW-Authenticate:
//! Bearer` challenge (RFC 6750), the wrong role 403, both problem+json.
//! The caller let in is put in the request's extensions as a [`Caller`].

pub mod oidc;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

pub use oidc::{Identity, Oidc, OidcSettings};

use super::http::Problem;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Admin,
}

impl Need {
    /// Reads or writes of the data, by method.
    pub fn of(method: &Method) -> Need {
        if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS { Need::Read } else { Need::Write }
    }
}

/// Who a request was let in as.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No issuer configured: the data routes are open.
    Anyone,
    /// A loopback client of the admin API, no token configured.
    Loopback,
    /// The admin token.
    AdminToken,
    /// A user of the issuer.
    User(Identity),
}

/// A refusal: the problem, and the challenge of a 401 or 403.
#[derive(Debug)]
pub struct Denied {
    pub problem: Problem,
    challenge: Option<String>,
}

impl Denied {
    fn unauthorized(detail: &str, error: Option<&str>) -> Self {
        let challenge = match error {
            None => "Bearer realm=\"runnel\"".to_string(),
            Some(error) => format!("Bearer realm=\"runnel\", error=\"{error}\", error_description=\"{}\"", quoted(detail)),
        };
        Denied { problem: Problem::unauthorized(detail), challenge: Some(challenge) }
    }

    fn forbidden(detail: &str, challenge: bool) -> Self {
        Denied {
            challenge: challenge.then(|| {
                format!("Bearer realm=\"runnel\", error=\"insufficient_scope\", error_description=\"{}\"", quoted(detail))
            }),
            problem: Problem::forbidden(detail),
        }
    }
}

/// Text safe inside a quoted header parameter.
fn quoted(text: &str) -> String {
    text.chars().filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\').collect()
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let unavailable = self.problem.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = self.problem.into_response();
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if unavailable {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// The access rules of the host. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    oidc: Option<Oidc>,
    admin_token: Option<Arc<str>>,
}

impl Auth {
    /// `oidc`: the issuer whose tokens are accepted (none: the data routes
    /// are open); `admin_token`: a bearer token for automation that may
    /// use the admin API.
    pub fn new(oidc: Option<Oidc>, admin_token: Option<&str>) -> Self {
        Auth { inner: Arc::new(Inner { oidc, admin_token: admin_token.map(Arc::from) }) }
    }

    /// Whether tokens are checked on the data routes.
    pub fn is_open(&self) -> bool {
        self.inner.oidc.is_none()
    }

    /// Lets a request in, or says why not.
    pub async fn check(&self, need: Need, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Caller, Denied> {
        let inner = &*self.inner;
        let bearer = bearer(headers)?;
        if need == Need::Admin {
            if let (Some(expected), Some(token)) = (&inner.admin_token, bearer)
                && constant_time_eq(token.as_bytes(), expected.as_bytes())
            {
                return Ok(Caller::AdminToken);
            }
            if inner.oidc.is_none() {
                return match (&inner.admin_token, bearer) {
                    (Some(_), None) => Err(Denied::unauthorized("the admin API needs `Authorization: Bearer <token>`", None)),
                    (Some(_), Some(_)) => Err(Denied::forbidden("the admin token is not valid", false)),
                    (None, _) => match peer {
                        Some(peer) if peer.ip().is_loopback() => Ok(Caller::Loopback),
                        _ => Err(Denied::forbidden(
                            "the admin API answers only loopback clients when neither RUNNEL_ADMIN_TOKEN nor RUNNEL_OIDC_ISSUER is set",
                            false,
                        )),
                    },
                };
            }
        }
        let Some(oidc) = &inner.oidc else {
            return Ok(Caller::Anyone);
        };
        let Some(token) = bearer else {
            return Err(Denied::unauthorized("this route needs `Authorization: Bearer <token>` from the issuer", None));
        };
        let identity = oidc.validate(token).await.map_err(|e| match e {
            oidc::TokenError::Invalid(why) => Denied::unauthorized(&why, Some("invalid_token")),
            oidc::TokenError::KeysUnavailable(why) => Denied { problem: Problem::unavailable(why), challenge: None },
        })?;
        let (write_role, admin_role) = (&oidc.settings().write_role, &oidc.settings().admin_role);
        let has = |role: &str| identity.roles.iter().any(|r| r == role);
        let allowed = match need {
            Need::Read => true,
            Need::Write => has(write_role) || has(admin_role),
            Need::Admin => has(admin_role),
        };
        if !allowed {
            let role = if need == Need::Admin { admin_role } else { write_role };
            let what = if need == Need::Admin { "the admin API" } else { "changing data" };
            return Err(Denied::forbidden(&format!("{what} needs the role {role}"), true));
        }
        Ok(Caller::User(identity))
    }

    async fn let_in(&self, need: Need, mut request: Request, next: Next) -> Response {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        match self.check(need, request.headers(), peer).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
            Err(denied) => {
                tracing::debug!(status = denied.problem.status.as_u16(), path = %request.uri().path(), "refused: {}", denied.problem.detail);
                denied.into_response()
            }
        }
    }
}

/// Middleware of the data routes: reads and writes by method.
pub async fn data(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let need = Need::of(request.method());
    auth.let_in(need, request, next).await
}

/// Middleware of the admin routes.
pub async fn admin(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    auth.let_in(Need::Admin, request, next).await
}

/// The bearer token, if the request has an `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Denied> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .map(Some)
        .ok_or_else(|| Denied::unauthorized("the Authorization header is not `Bearer <token>`", Some("invalid_request")))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[tokio::test]
    async fn without_a_token_or_issuer_only_loopback_clients_reach_the_admin_api() {
        let auth = Auth::new(None, None);
        let none = HeaderMap::new();
        assert!(auth.check(Need::Admin, &none, peer("127.0.0.1:5000")).await.is_ok());
        assert!(auth.check(Need::Admin, &none, peer("[::1]:5000")).await.is_ok());
        for outside in ["10.0.0.7:5000", "192.168.1.2:80", "[2001:db8::1]:443"] {
            let refused = auth.check(Need::Admin, &none, peer(outside)).await.unwrap_err();
            assert_eq!(refused.problem.status, StatusCode::FORBIDDEN, "{outside}");
        }
        // No peer address known: refused, never assumed local.
        assert_eq!(auth.check(Need::Admin, &none, None).await.unwrap_err().problem.status, StatusCode::FORBIDDEN);
        // The data routes are open.
        assert!(matches!(auth.check(Need::Write, &none, peer("10.0.0.7:1")).await, Ok(Caller::Anyone)));
    }

    #[tokio::test]
    async fn with_an_admin_token_the_peer_does_not_matter_the_token_does() {
        let auth = Auth::new(None, Some("the-token-0123456789"));
        let status = |r: Result<Caller, Denied>| r.unwrap_err().problem.status;
        assert!(auth.check(Need::Admin, &with("Bearer the-token-0123456789"), peer("10.0.0.7:5000")).await.is_ok());
        assert!(auth.check(Need::Admin, &with("bearer the-token-0123456789"), peer("10.0.0.7:5000")).await.is_ok());
        assert_eq!(status(auth.check(Need::Admin, &HeaderMap::new(), peer("127.0.0.1:1")).await), StatusCode::UNAUTHORIZED);
        assert_eq!(status(auth.check(Need::Admin, &with("Bearer wrong"), peer("127.0.0.1:1")).await), StatusCode::FORBIDDEN);
        assert_eq!(
            status(auth.check(Need::Admin, &with("Bearer the-token-012345678"), peer("127.0.0.1:1")).await),
            StatusCode::FORBIDDEN
        );
        let basic = auth.check(Need::Admin, &with("Basic eDp5"), peer("127.0.0.1:1")).await.unwrap_err();
        assert_eq!(basic.problem.status, StatusCode::UNAUTHORIZED);
        assert!(basic.challenge.unwrap().contains("invalid_request"));
    }

    #[test]
    fn challenges_hold_no_quotes_or_control_characters() {
        let denied = Denied::unauthorized("a \"quoted\"\nline\\", Some("invalid_token"));
        assert_eq!(
            denied.challenge.unwrap(),
            "Bearer realm=\"runnel\", error=\"invalid_token\", error_description=\"a quotedline\""
        );
    }
}
