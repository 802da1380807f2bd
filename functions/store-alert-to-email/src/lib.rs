//! `store-alert-to-email`: a Runnel function, run by the host for every record
//! on `store-alerts-topic` (consumer group `store-alerts`).
//!
//! For an event `{"storeName": …, "storeStatus": …}` it records a StoreAlert in
//! the `store_alerts` collection and mails the distribution list
//! (`Store Alert: <storeName>`, body = the status). It reaches the outside only
//! through the host capabilities imported by the `stream-function` world.
//!
//! A record delivered again (after a crash or a retry) stores no second alert
//! and sends no second mail: the host journals each capability call and
//! answers it from the journal on a later delivery, so the function needs no
//! idempotence tricks of its own.

use runnel_guest::{Guest, HandlerError, Message, clock, config, documents, logging, mail};
use serde::{Deserialize, Serialize};

/// The event the host produces when a store is updated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreAlertEvent {
    store_name: String,
    store_status: StoreStatus,
}

#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "UPPERCASE")]
enum StoreStatus {
    Open,
    Closed,
}

impl StoreStatus {
    fn as_str(self) -> &'static str {
        match self {
            StoreStatus::Open => "OPEN",
            StoreStatus::Closed => "CLOSED",
        }
    }
}

/// What is stored in `store_alerts`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoreAlert<'a> {
    store_name: &'a str,
    store_status: StoreStatus,
    timestamp: serde_json::Value,
}

struct StoreAlertToEmail;

impl Guest for StoreAlertToEmail {
    fn handle(message: Message) -> Result<(), HandlerError> {
        let event: StoreAlertEvent = message.json()?;
        if event.store_name.trim().is_empty() {
            return Err(HandlerError::BadInput("storeName is empty".into()));
        }
        let recipients = distribution_list()?;

        let alert = StoreAlert {
            store_name: &event.store_name,
            store_status: event.store_status,
            timestamp: documents::date(clock::now_ms()),
        };
        let id = documents::insert("store_alerts", &alert)?;
        mail::send(&mail::Message {
            to: recipients,
            subject: format!("Store Alert: {}", event.store_name),
            body: event.store_status.as_str().to_string(),
        })?;
        logging::log(logging::Level::Info, &format!("alert {id} for store '{}' mailed", event.store_name));
        Ok(())
    }
}

fn distribution_list() -> Result<Vec<String>, HandlerError> {
    let list = config::get("distribution-list").unwrap_or_default();
    let recipients: Vec<String> = list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if recipients.is_empty() {
        return Err(HandlerError::GiveUp("config 'distribution-list' is not set or empty".into()));
    }
    Ok(recipients)
}

runnel_guest::export_function!(StoreAlertToEmail);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_guest::testing::{TestHost, message};

    const EVENT: &str = r#"{"storeName": "S1", "storeStatus": "CLOSED"}"#;

    #[test]
    fn stores_an_alert_and_mails_the_list() {
        let mut host = TestHost::new().config("distribution-list", "a@example.com, b@example.com").grant("store_alerts");
        host.run(|| StoreAlertToEmail::handle(message(EVENT))).unwrap();
        let alert = &host.collections["store_alerts"][0];
        assert_eq!(alert["storeName"], "S1");
        assert_eq!(alert["storeStatus"], "CLOSED");
        assert_eq!(alert["timestamp"], documents::date(host.now_ms));
        assert_eq!(host.mails.len(), 1);
        assert_eq!(host.mails[0].to, ["a@example.com", "b@example.com"]);
        assert_eq!(host.mails[0].subject, "Store Alert: S1");
        assert_eq!(host.mails[0].body, "CLOSED");
    }

    #[test]
    fn bad_input_is_dead_lettered_and_mails_nothing() {
        let mut host = TestHost::new().config("distribution-list", "a@example.com");
        for payload in ["not json", "[]", r#"{"storeName": " ", "storeStatus": "OPEN"}"#, r#"{"storeName": "S", "storeStatus": "AJAR"}"#] {
            let outcome = host.run(|| StoreAlertToEmail::handle(message(payload)));
            assert!(matches!(outcome, Err(HandlerError::BadInput(_))), "{payload}: {outcome:?}");
        }
        assert!(host.mails.is_empty());
    }

    #[test]
    fn gives_up_without_a_distribution_list_or_a_grant() {
        let outcome = TestHost::new().run(|| StoreAlertToEmail::handle(message(EVENT)));
        assert!(matches!(outcome, Err(HandlerError::GiveUp(_))), "{outcome:?}");
        let mut host = TestHost::new().config("distribution-list", "a@example.com").grant("elsewhere");
        let outcome = host.run(|| StoreAlertToEmail::handle(message(EVENT)));
        assert!(matches!(outcome, Err(HandlerError::GiveUp(m)) if m.contains("not granted")));
        assert!(host.mails.is_empty());
    }
}
