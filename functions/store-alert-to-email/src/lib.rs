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

#![no_std]

extern crate alloc;

use alloc::{format, string::String, string::ToString, vec::Vec};

use runnel_guest::{Guest, HandlerError, Message, clock, config, documents, logging, mail};
use serde::Deserialize;

/// The event the host produces when a store is updated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreAlertEvent {
    store_name: String,
    store_status: StoreStatus,
}

#[derive(Debug, Deserialize, Clone, Copy)]
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

const COLLECTION: &str = "store_alerts";

struct StoreAlertToEmail;

impl Guest for StoreAlertToEmail {
    fn handle(message: Message) -> Result<(), HandlerError> {
        let event: StoreAlertEvent = serde_json::from_slice(&message.payload)
            .map_err(|e| HandlerError::BadInput(format!("not a store alert event: {e}")))?;
        if event.store_name.trim().is_empty() {
            return Err(HandlerError::BadInput("storeName is empty".into()));
        }

        let recipients = distribution_list()?;
        let alert = serde_json::json!({
            "storeName": event.store_name,
            "storeStatus": event.store_status.as_str(),
            "timestamp": { "$date": { "$numberLong": clock::now_ms().to_string() } },
        });
        let id = documents::insert_one(COLLECTION, &alert.to_string()).map_err(document_error)?;

        let sent = mail::send(&mail::Message {
            to: recipients,
            subject: format!("Store Alert: {}", event.store_name),
            body: event.store_status.as_str().to_string(),
        });
        match sent {
            Ok(()) => {
                logging::log(
                    logging::Level::Info,
                    &format!("alert {id} for store '{}' mailed", event.store_name),
                );
                Ok(())
            }
            Err(mail::MailError::Unavailable(e)) => Err(HandlerError::RetryLater(e)),
            Err(mail::MailError::Invalid(e) | mail::MailError::NotPermitted(e)) => {
                Err(HandlerError::GiveUp(e))
            }
        }
    }
}

fn distribution_list() -> Result<Vec<String>, HandlerError> {
    let list = config::get("distribution-list")
        .ok_or_else(|| HandlerError::GiveUp("config 'distribution-list' is not set".into()))?;
    let recipients: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if recipients.is_empty() {
        return Err(HandlerError::GiveUp("config 'distribution-list' is empty".into()));
    }
    Ok(recipients)
}

fn document_error(e: documents::DocumentError) -> HandlerError {
    use documents::DocumentError::*;
    match e {
        Unavailable(m) => HandlerError::RetryLater(m),
        Conflict(m) | Invalid(m) | NotPermitted(m) => HandlerError::GiveUp(m),
    }
}

runnel_guest::export_function!(StoreAlertToEmail);
