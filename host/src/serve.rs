//! `runnel serve`: wires the platform and the application together, serves
//! until told to stop, then stops the HTTP server and the triggers in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Json, Router, extract::Request, routing::get};
use tokio::sync::watch;

use crate::{
    app,
    config::Config,
    platform::{
        admin::{self, AdminState},
        auth::{self, Auth, Oidc},
        dashboard::{self, Dashboard},
        capabilities::{Services, mail::Mail},
        deployments::{Deployer, Registry, TriggerSettings, VersionStore},
        health::{self, Health},
        metrics::{self, Metrics},
        http::Problem,
        journal::Journal,
        kafka::{self, EventProducer},
        outbox::Outbox,
        runtime::{Limits, Runtime},
        storage, trace,
    },
};

/// How long the relay's producer keeps trying to deliver one event before
/// the relay tries it again (from the database).
const OUTBOX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts everything `config` asks for and serves until `shutdown` resolves
/// (or the HTTP server fails), then stops in order.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let spans = trace::otlp::Exporter::from_env(tokio::runtime::Handle::current())?;
    let database = storage::connect(&config.mongodb_uri, &config.mongodb_database, config.connect_timeout).await?;
    let client = database.client().clone();
    let result = serve(config, database, shutdown).await;
    // The driver's workers end before the runtime does: a task still using
    // the database then gets an error, not a panic in the driver.
    if tokio::time::timeout(Duration::from_secs(5), client.shutdown().immediate(true)).await.is_err() {
        tracing::warn!("the database client did not shut down within 5 s");
    }
    if let Some(spans) = spans {
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
    }
    result
}

async fn serve(
    config: Config,
    database: mongodb::Database,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mail = Mail::new(&config.smtp_url, &config.mail_from)?;
    // Dead letters; the outbox's events go through an idempotent producer.
    let cluster = kafka::Cluster::new(&config.kafka_brokers, config.kafka_properties.clone());
    let producer = EventProducer::new(&cluster, config.connect_timeout, false)?;
    let relay_producer = EventProducer::new(&cluster, OUTBOX_DELIVERY_TIMEOUT, true)?;
    let services = Services::new(database.clone(), mail, config.capability_timeout);
    let journal = Journal::open(&database, config.capability_timeout).await.context("cannot prepare the journal")?;
    app::prepare(&database).await.context("cannot prepare the application's collections")?;
    let metrics = Metrics::new();
    let limits = Limits::default();
    let runtime = Runtime::new(services, limits, config.compiled_dir.clone())?;

    // The application's topics; each function's are created when it starts.
    let topics = kafka::Topics::connect(&cluster, config.topic_partitions, config.connect_timeout).await?;
    topics.ensure(&app::topics()).await?;

    let registry = Registry::new(TriggerSettings {
        cluster,
        producer: producer.clone(),
        topics: topics.clone(),
        journal: journal.clone(),
        metrics: metrics.clone(),
        call_deadline: limits.timeout + Duration::from_secs(1),
        timeout: config.connect_timeout,
        // Long enough for a call in progress to end within its own deadline.
        stop_grace: limits.timeout + Duration::from_secs(10),
    });
    let deployer = Deployer::new(
        runtime.clone(),
        registry.clone(),
        VersionStore::new(&database),
        Arc::new(|var| std::env::var(var).ok()),
        config.trusted_keys.clone(),
    );
    match &config.trusted_keys {
        Some(keys) => tracing::info!(?keys, "only versions signed by a trusted key are deployed and run"),
        None => tracing::info!("RUNNEL_TRUSTED_KEYS is not set: versions need no signature"),
    }
    let health = Health { database: database.clone(), topics, deployer: deployer.clone() };

    let auth = access(&config).await?;

    // Bound before any trigger starts, so that a taken port fails start-up
    // with nothing running yet.
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("RUNNEL_HTTP_ADDR: cannot listen on {}", config.http_addr))?;

    let started = async {
        match &config.functions_dir {
            Some(dir) => deployer.seed(dir).await?,
            None => tracing::info!("RUNNEL_FUNCTIONS_DIR is not set: functions come from deploys only"),
        }
        deployer.sync().await
    };
    if let Err(e) = started.await {
        registry.shutdown().await;
        return Err(e);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = match &config.functions_dir {
        Some(dir) => match crate::platform::deployments::watch::watch_dir(deployer.clone(), dir.clone(), stop_rx.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                registry.shutdown().await;
                return Err(e.context(format!("RUNNEL_FUNCTIONS_DIR: cannot watch '{}'", dir.display())));
            }
        },
        None => None,
    };
    let mut sync = tokio::spawn(deployer.clone().sync_until(config.sync_interval, stop_rx.clone()));
    let (outbox, mut relay) = Outbox::start(&database, relay_producer, &app::outbox_collections(), stop_rx.clone());
    metrics.set_sources(Arc::new(Sources { registry: registry.clone(), journal, outbox: outbox.clone(), runtime }));

    let dashboard = Dashboard {
        registry: registry.clone(),
        panels: Arc::new(app::dashboard_panels(database.clone())),
        interval: Duration::from_secs(1),
        stop: stop_rx.clone(),
    };
    let app = router(
        &config,
        database,
        outbox,
        AdminState { deployer: deployer.clone(), auth: auth.clone() },
        auth,
        health,
        metrics,
        dashboard,
    );
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let mut http_stop = stop_rx.clone();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let mut server = tokio::spawn(async move { server.await });

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        // The server ends only on a failure: the host must not go on without
        // its API (a supervisor restarts it).
        ended = &mut server => {
            let reason = match ended {
                Ok(Ok(())) => "it stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!("the HTTP server failed: {reason}; shutting down");
            Err(anyhow::anyhow!("the HTTP server failed: {reason}"))
        }
        // Neither ends before the stop either: without the relay, events
        // would wait forever; without the sync, deploys would not arrive.
        ended = &mut relay => Err(part_failed("the outbox relay", ended.err())),
        ended = &mut sync => Err(part_failed("the deployment sync", ended.err())),
    };
    let _ = stop_tx.send(true);
    // In order: no new requests (those in flight finish), no more syncs or
    // reloads, then the triggers (a deploy still running is refused by the
    // closed registry rather than starting a consumer nobody stops).
    let drained = async {
        if !server.is_finished() {
            let _ = server.await;
        }
        if !sync.is_finished() {
            let _ = sync.await;
        }
        if !relay.is_finished() {
            let _ = relay.await;
        }
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        registry.shutdown().await;
    };
    // A sync waiting for a trigger to stop, then every trigger stopping.
    let grace = (limits.timeout + Duration::from_secs(10)) * 2 + Duration::from_secs(10);
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("shutdown took longer than {grace:?}; exiting anyway");
    }
    result
}

/// The access rules: the issuer's keys read (start-up fails naming the
/// variable if they cannot be), and a warning for whatever is left open.
async fn access(config: &Config) -> anyhow::Result<Auth> {
    let oidc = match &config.oidc {
        Some(settings) => {
            let oidc = Oidc::discover(settings.clone(), config.connect_timeout)
                .await
                .map_err(|e| anyhow::anyhow!("RUNNEL_OIDC_ISSUER: {e}"))?;
            tracing::info!(issuer = %settings.issuer, audience = %settings.audience, "the API accepts this issuer's tokens");
            Some(oidc)
        }
        None => {
            tracing::warn!(
                addr = %config.http_addr,
                "RUNNEL_OIDC_ISSUER is not set: the /api routes are open to anyone who can reach this address"
            );
            if config.admin_token.is_none() {
                tracing::warn!("RUNNEL_ADMIN_TOKEN is not set: the admin API answers loopback clients only");
            }
            None
        }
    };
    Ok(Auth::new(oidc, config.admin_token.as_deref()))
}

/// Logs that a part of the host that runs until the stop has ended; the
/// error the host exits with.
fn part_failed(part: &str, error: Option<tokio::task::JoinError>) -> anyhow::Error {
    let reason = match error {
        Some(e) if e.is_panic() => format!("{part} crashed"),
        _ => format!("{part} stopped"),
    };
    tracing::error!("{reason}; shutting down");
    anyhow::anyhow!(reason)
}

/// The application's routes, the admin API, and the OpenAPI document of both.
fn router(
    config: &Config,
    database: mongodb::Database,
    outbox: Outbox,
    admin: AdminState,
    auth: Auth,
    health: Health,
    metrics: Metrics,
    dashboard: Dashboard,
) -> Router {
    let (app_router, mut doc) = app::api::router(app::api::AppState { database, outbox }, config.max_body_bytes);
    // Reads need a token of the issuer, writes its write role (when one is set).
    let app_router = app_router.route_layer(axum::middleware::from_fn_with_state(auth.clone(), auth::data));
    // Every data request, its access check included, has a deadline.
    let app_router = app_router.route_layer(axum::middleware::from_fn_with_state(config.request_timeout, crate::platform::http::deadline::limit));
    crate::platform::http::deadline::document(&mut doc, config.request_timeout);
    let (admin_router, admin_doc) = admin::router(admin, config.max_component_bytes);
    doc.merge(admin_doc);
    let (health_router, health_doc) = health::router(health);
    doc.merge(health_doc);
    // `/openapi.json` describes itself too.
    let mut own = crate::platform::http::openapi::Api::<()>::default();
    own = own.describe(
        "/openapi.json",
        vec![crate::platform::http::openapi::Op::new(utoipa::openapi::HttpMethod::Get, "openapi", "This document", "meta").json(
            200,
            "The OpenAPI 3 document",
            utoipa::openapi::ObjectBuilder::new().build(),
        )],
    );
    own = own.describe(
        "/metrics",
        vec![crate::platform::http::openapi::Op::new(utoipa::openapi::HttpMethod::Get, "metrics", "Prometheus metrics (OpenMetrics text)", "meta")
            .response(200, utoipa::openapi::ResponseBuilder::new().description("The metrics").build())],
    );
    for (path, id, summary) in [
        ("/ui", "dashboard", "The dashboard's page (static; its data comes from /ui/events)"),
        ("/ui/", "dashboard_slash", "The same page"),
        ("/ui/dashboard.js", "dashboard_script", "The dashboard's script"),
        ("/ui/dashboard.css", "dashboard_style", "The dashboard's style"),
    ] {
        own = own.describe(
            path,
            vec![crate::platform::http::openapi::Op::new(utoipa::openapi::HttpMethod::Get, id, summary, "dashboard")
                .response(200, utoipa::openapi::ResponseBuilder::new().description(summary).build())],
        );
    }
    own = own.describe(
        "/ui/events",
        vec![crate::platform::http::openapi::Op::new(
            utoipa::openapi::HttpMethod::Get,
            "dashboard_events",
            "Server-sent events: a snapshot of the functions on this host and the application's panels, every second",
            "dashboard",
        )
        .response(200, utoipa::openapi::ResponseBuilder::new().description("text/event-stream of `snapshot` events").build())
        .problem(401, "No bearer token while RUNNEL_ADMIN_TOKEN or RUNNEL_OIDC_ISSUER is set, or one that is not valid")
        .problem(403, "A token without the admin role, or a client not on loopback when neither is set")],
    );
    doc.merge(own.finish().1);
    let doc = Arc::new(doc);
    let counted = metrics.clone();
    app_router
        .merge(admin_router)
        .merge(health_router)
        .merge(dashboard::router(dashboard, auth))
        .route("/openapi.json", get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }))
        .route("/metrics", get(metrics::serve).with_state(metrics.clone()))
        // Every route above is counted by its template.
        .route_layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .route_layer(axum::middleware::from_fn(trace::route))
        .fallback(move |request: Request| {
            let (metrics, started, method) = (counted.clone(), std::time::Instant::now(), request.method().to_string());
            async move {
                let problem = not_found(request).await;
                metrics::untracked(&metrics, &method, axum::http::StatusCode::NOT_FOUND, started);
                problem
            }
        })
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost: every request, routed or not, has a trace and an access line.
        .layer(axum::middleware::from_fn(trace::http))
}

/// Where the metrics' gauges are read from, at each scrape.
struct Sources {
    registry: Registry,
    journal: Journal,
    outbox: Outbox,
    runtime: Runtime,
}

impl metrics::Sources for Sources {
    fn lag(&self) -> Vec<(String, String, i32, i64)> {
        self.registry.lag()
    }

    fn journal_backlog(&self) -> i64 {
        self.journal.backlog()
    }

    fn outbox_backlog(&self) -> Vec<(String, i64)> {
        self.outbox.backlog().into_iter().map(|(c, n)| (c, n as i64)).collect()
    }

    fn wasm(&self) -> (i64, i64) {
        self.runtime.usage()
    }
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::method_not_allowed(format!("{} is not allowed on {}", request.method(), request.uri().path()))
}
