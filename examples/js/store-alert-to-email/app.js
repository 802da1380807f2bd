// store-alert-to-email, in JavaScript: for every event
// {"storeName": ..., "storeStatus": "OPEN"|"CLOSED"} on store-alerts-topic,
// records a StoreAlert in `store_alerts` and mails the distribution list
// ("Store Alert: <storeName>", body: the status).
//
// The same function as functions/store-alert-to-email (Rust); deployed in its
// place it passes the same end-to-end test.
import { BadInput, GiveUp, config, documents, log, mail, nowMs } from "runnel";

const STATUSES = ["OPEN", "CLOSED"];

export function handle(message) {
  const event = message.json();
  if (event === null || typeof event !== "object" || Array.isArray(event)) {
    throw new BadInput("not a store alert event: expected a JSON object");
  }
  const { storeName, storeStatus } = event;
  if (typeof storeName !== "string" || storeName.trim() === "") {
    throw new BadInput("storeName is missing or empty");
  }
  if (!STATUSES.includes(storeStatus)) {
    throw new BadInput(`storeStatus must be OPEN or CLOSED, not ${JSON.stringify(storeStatus)}`);
  }

  const recipients = (config("distribution-list") ?? "").split(",").map((a) => a.trim()).filter(Boolean);
  if (recipients.length === 0) {
    throw new GiveUp("config 'distribution-list' is not set or empty");
  }

  const id = documents.insertOne("store_alerts", {
    storeName,
    storeStatus,
    timestamp: documents.date(nowMs()),
  });
  mail.send(recipients, `Store Alert: ${storeName}`, storeStatus);
  log(`alert ${id} for store '${storeName}' mailed`);
}
