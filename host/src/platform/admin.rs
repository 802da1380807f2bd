//! `/admin`: deploy, list, roll back and undeploy functions. Deploying is
//! running code on the host, so every admin route needs [`Need::Admin`](super::auth::Need).
//!
//! | route | |
//! |---|---|
//! | `GET /admin/functions` | every function: active version, earlier versions, state here, counters |
//! | `GET /admin/functions/{name}` | one |
//! | `PUT /admin/functions/{name}` | deploy: `multipart/form-data` with parts `manifest` (TOML), `component` (the `.wasm`) and, when keys are trusted, `signature` |
//! | `DELETE /admin/functions/{name}` | undeploy (versions are kept) |
//! | `POST /admin/functions/{name}/rollback` | activate the previous version, or `{"version": "…"}` |
//! | `POST /admin/functions/{name}/replay` | run dead letters, or records from an offset or a time, through the running version |

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Multipart, Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    middleware,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::{
    ContentBuilder, HttpMethod, ObjectBuilder, OpenApi, RefOr, Required, Schema,
    request_body::RequestBodyBuilder,
    schema::{ArrayBuilder, Type},
};

use super::{
    auth::{self, Auth},
    kafka::replay::{ReplayFrom, ReplayReport},
    deployments::{DeployError, Deployer, FunctionDoc, HistoryEntry, ReplayError, registry::FunctionStatus},
    http::{
        Problem,
        openapi::{Api, Op, schema_ref},
        request::json_object,
    },
};

#[derive(Clone)]
pub struct AdminState {
    pub deployer: Deployer,
    pub auth: Auth,
}

/// One function, as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionView {
    pub name: String,
    /// The version every host runs; none once undeployed.
    pub active_version: Option<String>,
    /// Grows with every deploy, rollback and undeploy.
    pub revision: i64,
    /// On this host: starting, running, failed, stopped or undeployed.
    pub state: String,
    pub reason: Option<String>,
    /// What runs on this host, with its trigger and counters.
    pub running: Option<FunctionStatus>,
    /// Every version kept, newest first.
    pub versions: Vec<VersionView>,
    /// Every change of the active version, oldest first.
    pub history: Vec<HistoryView>,
}

/// One change of a function's active version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    /// None for an undeploy.
    pub version: Option<String>,
    /// deploy, rollback, undeploy, seed or reload.
    pub action: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub version: String,
    pub deployed_at: chrono::DateTime<chrono::Utc>,
    pub size: i64,
    /// The trusted key that signed it (by its name in RUNNEL_TRUSTED_KEYS,
    /// or its fingerprint); none if it was deployed unsigned.
    pub signer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: Option<String>,
}

/// The admin routes and their OpenAPI description. `max_component_bytes`
/// bounds a deploy's body.
pub fn router(state: AdminState, max_component_bytes: usize) -> (Router, OpenApi) {
    let mut api = Api::<AdminState>::default();
    api.schema::<FunctionView>();
    api.schema::<VersionView>();
    api.schema::<HistoryView>();
    api.schema::<FunctionStatus>();
    api.schema::<ReplayReport>();
    let tag = "admin";
    let view = || schema_ref("FunctionView");
    let multipart: RefOr<Schema> = ObjectBuilder::new()
        .property("manifest", ObjectBuilder::new().schema_type(Type::String).description(Some("runnel.toml")))
        .property("component", ObjectBuilder::new().schema_type(Type::String).format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary))))
        .property(
            "signature",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The signature document (`runnel sign`); required when RUNNEL_TRUSTED_KEYS is set")),
        )
        .required("manifest")
        .required("component")
        .into();
    let mut deploy = Op::new(HttpMethod::Put, "deploy_function", "Deploy a version (and make it active on every host)", tag)
        .with_path_parameter("name")
        .json(200, "Deployed and active on this host", view())
        .problem(400, "Not multipart/form-data, or a part missing or unknown (`field` names it)")
        .problem(413, "The body is larger than RUNNEL_MAX_COMPONENT_BYTES")
        .problem(422, "The manifest, the component or the signature cannot be used (`field` says which; the detail says why, with the manifest line): e.g. no signature, or one by a key that is not trusted, while RUNNEL_TRUSTED_KEYS is set")
        .problem(503, "The database did not answer; nothing was changed. (A version kept but not yet running here, e.g. while the broker is down, is answered 200 with state `failed` and the reason; every host keeps trying to start it.)");
    deploy.operation = deploy.operation.request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content("multipart/form-data", ContentBuilder::new().schema(Some(multipart)).build())
            .build(),
    ));
    let mut rollback = Op::new(HttpMethod::Post, "rollback_function", "Activate the previous version, or a named one", tag)
        .with_path_parameter("name")
        .json(200, "Rolled back", view())
        .problem(400, "A malformed body")
        .problem(404, "No such function, or no such version of it");
    rollback.operation = rollback.operation.request_body(Some(json_request(
        Required::False,
        None,
        ObjectBuilder::new().property("version", ObjectBuilder::new().schema_type(Type::String)),
    )));
    let mut replay = Op::new(HttpMethod::Post, "replay_function", "Run records again through the running version", tag)
        .with_path_parameter("name")
        .json(200, "How many records were replayed, and how they ended", schema_ref("ReplayReport"))
        .problem(400, "A malformed body")
        .problem(404, "No such function")
        .problem(409, "The function runs nothing on this host (an undeployed one's group offsets are moved instead, for an offset or a time)")
        .problem(503, "The broker or the database did not answer");
    let time = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
    };
    replay.operation = replay.operation.request_body(Some(json_request(
        Required::True,
        Some(
            "`{\"from\": \"dead-letters\"}` (optionally `\"since\": RFC 3339 time`), \
             `{\"from\": \"offset\", \"offset\": N}` or `{\"from\": \"time\", \"time\": RFC 3339 time}`",
        ),
        ObjectBuilder::new()
            .property("from", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["dead-letters", "offset", "time"])))
            .property("since", time())
            .property("offset", ObjectBuilder::new().schema_type(Type::Integer))
            .property("time", time())
            .required("from"),
    )));
    let unauthorized = |op: Op| {
        op.problem(401, "No bearer token, or a token of the issuer that is not valid (RUNNEL_ADMIN_TOKEN or RUNNEL_OIDC_ISSUER is set)")
            .problem(403, "A wrong admin token, a token without the admin role, or a client not on loopback when neither is set")
    };
    let api = api
        .route(
            "/admin/functions",
            get(list),
            vec![unauthorized(Op::new(HttpMethod::Get, "list_functions", "Every function and its versions", tag).json(
                200,
                "Every function ever deployed",
                ArrayBuilder::new().items(view()).build(),
            ))],
        )
        .route(
            "/admin/functions/{name}",
            get(read).put(deploy_function).delete(undeploy),
            vec![
                unauthorized(
                    Op::new(HttpMethod::Get, "read_function", "One function", tag)
                        .with_path_parameter("name")
                        .json(200, "Found", view())
                        .problem(404, "Never deployed"),
                ),
                unauthorized(deploy),
                unauthorized(
                    Op::new(HttpMethod::Delete, "undeploy_function", "Undeploy on every host (versions are kept)", tag)
                        .with_path_parameter("name")
                        .json(200, "Undeployed", view())
                        .problem(404, "Not deployed"),
                ),
            ],
        )
        .route("/admin/functions/{name}/rollback", post(rollback_function), vec![unauthorized(rollback)])
        .route("/admin/functions/{name}/replay", post(replay_function), vec![unauthorized(replay)]);
    let (router, doc) = api.finish();
    let auth = state.auth.clone();
    let router = router
        .layer(DefaultBodyLimit::max(max_component_bytes))
        .layer(middleware::from_fn_with_state(auth, auth::admin))
        .with_state(state);
    (router, doc)
}

/// A JSON request body of `schema`.
fn json_request(required: Required, description: Option<&str>, schema: ObjectBuilder) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(required))
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

async fn view(state: &AdminState, function: FunctionDoc) -> Result<FunctionView, Problem> {
    let deployer = &state.deployer;
    let versions = deployer.store().versions_of(&function.name).await.map_err(unavailable)?;
    let running = deployer.registry().status(&function.name);
    let local_error = deployer.local_error(&function.name);
    let (state, reason) = match (&function.active, &running, local_error) {
        (None, _, _) => ("undeployed".to_string(), None),
        (Some(_), _, Some(error)) => ("failed".to_string(), Some(error)),
        (Some(_), Some(status), None) => (status.state.name().to_string(), status.state.reason().map(String::from)),
        (Some(_), None, None) => ("starting".to_string(), None),
    };
    Ok(FunctionView {
        name: function.name,
        active_version: function.active,
        revision: function.revision,
        state,
        reason,
        running,
        versions: versions
            .into_iter()
            .map(|v| VersionView { version: v.version, deployed_at: v.deployed_at.to_chrono(), size: v.size, signer: v.signer })
            .collect(),
        history: function
            .history
            .into_iter()
            .map(|h: HistoryEntry| HistoryView { version: h.version, action: h.action, at: h.at.to_chrono() })
            .collect(),
    })
}

fn unavailable(e: mongodb::error::Error) -> Problem {
    tracing::error!("admin: database: {e}");
    Problem::unavailable("the database is unavailable; try again later")
}

async fn list(State(state): State<AdminState>) -> Result<Json<Vec<FunctionView>>, Problem> {
    let functions = state.deployer.store().functions().await.map_err(unavailable)?;
    let mut views = Vec::with_capacity(functions.len());
    for function in functions {
        views.push(view(&state, function).await?);
    }
    Ok(Json(views))
}

async fn read_view(state: &AdminState, name: &str) -> Result<Json<FunctionView>, Problem> {
    let function = state
        .deployer
        .store()
        .function(name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::not_found(format!("no function '{name}'")))?;
    Ok(Json(view(state, function).await?))
}

async fn read(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Json<FunctionView>, Problem> {
    read_view(&state, &name).await
}

fn deploy_problem(e: DeployError) -> Problem {
    let detail = e.to_string();
    match e {
        DeployError::Manifest(_) | DeployError::Grants(_) => Problem::unprocessable(detail).with_field("manifest"),
        DeployError::NameMismatch { .. } => Problem::unprocessable(detail).with_field("manifest.name"),
        DeployError::Component(_) => Problem::unprocessable(detail).with_field("component"),
        DeployError::Signature(_) => Problem::unprocessable(detail).with_field("signature"),
        DeployError::UnknownFunction(_) | DeployError::UnknownVersion(_) => Problem::not_found(detail),
        DeployError::Unavailable(_) => {
            tracing::error!("admin: {detail}");
            Problem::unavailable(detail)
        }
    }
}

/// The most a signature document may take.
const MAX_SIGNATURE_BYTES: usize = 4096;

/// Reads the `manifest`, `component` and (optional) `signature` parts of a deploy.
async fn deploy_parts(mut multipart: Multipart) -> Result<(String, Vec<u8>, Option<String>), Problem> {
    let (mut manifest, mut component, mut signature) = (None, None, None);
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::payload_too_large("the deployment is larger than RUNNEL_MAX_COMPONENT_BYTES")
        } else {
            Problem::invalid_json(format!("not a valid multipart/form-data body: {}", e.body_text()))
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "manifest" => {
                let bytes = field.bytes().await.map_err(bad)?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| Problem::invalid_field("manifest", "manifest: is not UTF-8 text"))?;
                manifest = Some(text);
            }
            "component" => component = Some(field.bytes().await.map_err(bad)?.to_vec()),
            "signature" => {
                let bytes = field.bytes().await.map_err(bad)?;
                if bytes.len() > MAX_SIGNATURE_BYTES {
                    return Err(Problem::invalid_field("signature", format!("signature: longer than {MAX_SIGNATURE_BYTES} bytes")));
                }
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| Problem::invalid_field("signature", "signature: is not UTF-8 text"))?;
                signature = Some(text);
            }
            other => {
                return Err(Problem::invalid_field(
                    other,
                    format!("unknown part '{other}': expected `manifest`, `component` and optionally `signature`"),
                ));
            }
        }
    }
    let manifest = manifest.ok_or_else(|| Problem::invalid_field("manifest", "the `manifest` part is missing"))?;
    let component = component.ok_or_else(|| Problem::invalid_field("component", "the `component` part is missing"))?;
    Ok((manifest, component, signature))
}

async fn deploy_function(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<FunctionView>, Problem> {
    let multipart = multipart.map_err(|e| {
        Problem::unsupported_media_type(format!("expected multipart/form-data with parts `manifest` and `component`: {}", e.body_text()))
    })?;
    let (manifest, component, signature) = deploy_parts(multipart).await?;
    let deployer = state.deployer.clone();
    // In a task of its own: a client that hangs up does not cancel a deploy
    // half-way.
    let deployed = tokio::spawn(async move { deployer.deploy(Some(&name), &manifest, &component, signature.as_deref(), "deploy", false).await })
        .await
        .map_err(|e| Problem::unavailable(format!("the deploy was interrupted: {e}")))?
        .map_err(deploy_problem)?;
    read_view(&state, &deployed.name).await
}

async fn undeploy(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Json<FunctionView>, Problem> {
    let deployed = state.deployer.undeploy(&name).await.map_err(deploy_problem)?;
    read_view(&state, &deployed.name).await
}

async fn rollback_function(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FunctionView>, Problem> {
    let empty = body.as_ref().map(|b| b.is_empty()).unwrap_or(false);
    let request = if empty {
        RollbackRequest { version: None }
    } else {
        let value = json_object(&headers, body, &["application/json"])?;
        serde_json::from_value(value).map_err(|e| Problem::invalid_json(format!("expected {{\"version\": \"…\"}}: {e}")))?
    };
    let deployed = state.deployer.rollback(&name, request.version.as_deref()).await.map_err(deploy_problem)?;
    read_view(&state, &deployed.name).await
}

/// Where a replay starts, as a request body.
#[derive(Debug, Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case", deny_unknown_fields)]
enum ReplayRequest {
    DeadLetters { since: Option<chrono::DateTime<chrono::Utc>> },
    Offset { offset: i64 },
    Time { time: chrono::DateTime<chrono::Utc> },
}

async fn replay_function(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReplayReport>, Problem> {
    let value = json_object(&headers, body, &["application/json"])?;
    let request: ReplayRequest = serde_json::from_value(value).map_err(|e| {
        Problem::invalid_json(format!(
            "expected {{\"from\": \"dead-letters\"}}, {{\"from\": \"offset\", \"offset\": N}} or {{\"from\": \"time\", \"time\": \"…\"}}: {e}"
        ))
    })?;
    let from = match request {
        ReplayRequest::DeadLetters { since } => ReplayFrom::DeadLetters { since_ms: since.map(|t| t.timestamp_millis()) },
        ReplayRequest::Offset { offset } if offset >= 0 => ReplayFrom::Offset(offset),
        ReplayRequest::Offset { offset } => {
            return Err(Problem::invalid_json(format!("offset {offset}: an offset is 0 or more")));
        }
        ReplayRequest::Time { time } => ReplayFrom::Time(time.timestamp_millis()),
    };
    let deployer = state.deployer.clone();
    // In a task of its own: a client that hangs up does not stop a replay
    // between a record's run and its being remembered.
    let replayed = tokio::spawn(async move { deployer.replay(&name, from).await })
        .await
        .map_err(|e| Problem::unavailable(format!("the replay was interrupted: {e}")))?;
    match replayed {
        Ok(report) => Ok(Json(report)),
        Err(e @ ReplayError::UnknownFunction(_)) => Err(Problem::not_found(e.to_string())),
        Err(e @ ReplayError::NotRunning(_)) => Err(Problem::conflict(e.to_string())),
        Err(e @ ReplayError::Failed(_)) => {
            tracing::warn!("replay: {e}");
            Err(Problem::unavailable(e.to_string()))
        }
    }
}
