//! `store-alert-to-email`: a Runnel function, run by the host for every record
//! on `store-alerts-topic` (consumer group `store-alerts`).
//!
//! For an event `{"storeName": …, "storeStatus": …}` it records a StoreAlert in
//! the `store_alerts` collection and mails the distribution list
//! (`Store Alert: <storeName>`, body = the status). It reaches the outside only
//! through the host capabilities imported by the `stream-function` world.
//!
//! Redelivery is expected (the host commits after `ok`): the alert's `_id` is
//! derived from the record's coordinates, so a retried record never stores a
//! second alert.

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
        let id = alert_id(&message);
        let alert = serde_json::json!({
            "_id": id,
            "storeName": event.store_name,
            "storeStatus": event.store_status.as_str(),
            "timestamp": { "$date": { "$numberLong": clock::now_ms().to_string() } },
        });
        match documents::insert_one(COLLECTION, &alert.to_string()) {
            Ok(_) => {}
            // Stored by an earlier delivery of this record: only the mail may be missing.
            Err(documents::DocumentError::Conflict(_)) => {
                logging::log(logging::Level::Info, &format!("alert {id} already stored"));
            }
            Err(e) => return Err(document_error(e)),
        }

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

/// A UUID-shaped id that is the same for every delivery of one record: two
/// FNV-1a hashes of its topic, partition, offset and timestamp (the timestamp
/// tells apart records of a broker whose offsets started again).
fn alert_id(m: &Message) -> String {
    let coordinates = format!(
        "{}/{}/{}/{}",
        m.topic,
        m.partition,
        m.offset,
        m.timestamp_ms.unwrap_or_default()
    );
    let hash = |seed: u64| {
        coordinates.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    };
    let (hi, lo) = (hash(0xcbf2_9ce4_8422_2325), hash(0x6c62_272e_07bb_0142));
    // Version 8 (custom) and the RFC 9562 variant bits.
    let hi = (hi & !0xf000) | 0x8000;
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

runnel_guest::export_function!(StoreAlertToEmail);
