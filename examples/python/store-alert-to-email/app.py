"""store-alert-to-email, in Python: for every event
``{"storeName": ..., "storeStatus": "OPEN"|"CLOSED"}`` on
``store-alerts-topic``, records a StoreAlert in ``store_alerts`` and mails
the distribution list (``Store Alert: <storeName>``, body: the status).

The same function as ``functions/store-alert-to-email`` (Rust); deployed in
its place it passes the same end-to-end test.
"""

import runnel
from runnel import documents, mail

STATUSES = ("OPEN", "CLOSED")


@runnel.function
def handle(message: runnel.Message) -> None:
    event = message.json()
    if not isinstance(event, dict):
        raise runnel.BadInput("not a store alert event: expected a JSON object")
    name, status = event.get("storeName"), event.get("storeStatus")
    if not isinstance(name, str) or not name.strip():
        raise runnel.BadInput("storeName is missing or empty")
    if status not in STATUSES:
        raise runnel.BadInput(f"storeStatus must be OPEN or CLOSED, not {status!r}")

    recipients = [a.strip() for a in (runnel.config("distribution-list") or "").split(",") if a.strip()]
    if not recipients:
        raise runnel.GiveUp("config 'distribution-list' is not set or empty")

    alert_id = documents.insert_one("store_alerts", {
        "storeName": name,
        "storeStatus": status,
        "timestamp": documents.date(runnel.now_ms()),
    })
    mail.send(recipients, f"Store Alert: {name}", status)
    runnel.log(f"alert {alert_id} for store '{name}' mailed")
