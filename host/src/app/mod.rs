//! The application: the resources of the HTTP API, their storage, and the
//! events their changes produce. It uses the platform (the database, the
//! producer, the HTTP building blocks); the platform knows nothing of it.
//!
//! | module | concern |
//! |---|---|
//! | [`domain`] | resources, events and their validation (no I/O) |
//! | [`storage`] | their collections |
//! | [`api`] | their routes (generic CRUD in `api/resource.rs`) |

pub mod api;
pub mod domain;
pub mod storage;

/// Every topic the application produces to; the host creates them at start.
pub fn topics() -> Vec<String> {
    vec![domain::store::STORE_ALERTS_TOPIC.to_string(), domain::person::PERSON_TOPIC.to_string()]
}

/// Prepares the application's collections (their indexes), at start.
pub async fn prepare(database: &mongodb::Database) -> anyhow::Result<()> {
    storage::comicbooks::ensure_indexes(database).await?;
    Ok(())
}

/// The collections whose documents hold events waiting to be published
/// (see the platform's outbox): those of resources with `updated_event`.
pub fn outbox_collections() -> Vec<&'static str> {
    vec![storage::stores::COLLECTION, storage::persons::COLLECTION]
}

/// What the application adds to the dashboard: the latest store alerts.
pub fn dashboard_panels(database: mongodb::Database) -> Vec<crate::platform::dashboard::Panel> {
    let rows: crate::platform::dashboard::Rows = std::sync::Arc::new(move || {
        let database = database.clone();
        Box::pin(async move {
            let alerts = storage::store_alerts::latest(&database, 10).await?;
            Ok(alerts
                .into_iter()
                .map(|a| {
                    let at = a.timestamp.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default();
                    vec![a.store_name, a.store_status, at]
                })
                .collect())
        })
    });
    vec![crate::platform::dashboard::Panel {
        title: "Latest store alerts".into(),
        columns: vec!["Store".into(), "Status".into(), "Time".into()],
        rows,
    }]
}
