"""Run a function on a developer's machine, without a host or a component:
``python -m pytest`` (or unittest) against an in-memory stand-in.

    from runnel.testing import TestHost
    import app

    def test_mails_the_list():
        host = TestHost(config={"distribution-list": "a@example.com"})
        host.run(app.handle, b'{"storeName": "S1", "storeStatus": "OPEN"}')
        assert host.mails[0]["subject"] == "Store Alert: S1"

Documents are kept per collection; ``find`` matches top-level fields by
equality, which is what unit tests need; ``update_many`` is recorded in
``host.updates`` and answered with ``update_result``, and so is
``update_each`` (each of its updates recorded, one answer for all). With ``grants``, other
collections are not permitted; ``mail_allowed=False`` refuses mail; a
duplicate ``_id`` is a conflict; ``unavailable`` (a set of capability names:
"documents", "mail") makes those answer ``Unavailable``, as during an outage.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import Conflict, Invalid, Message, NotPermitted, Unavailable, _bindings


class TestHost:
    __test__ = False  # not a pytest test class

    def __init__(self, config: Optional[Dict[str, str]] = None, now_ms: Optional[int] = None,
                 grants: Optional[List[str]] = None, mail_allowed: bool = True,
                 unavailable: Optional[set] = None) -> None:
        self.config = dict(config or {})
        self.grants = list(grants or [])
        self.mail_allowed = mail_allowed
        self.unavailable = set(unavailable or ())
        self.clock = now_ms
        self.collections: Dict[str, List[Dict[str, Any]]] = {}
        self.mails: List[Dict[str, Any]] = []
        self.logs: List[Tuple[str, str]] = []
        self.updates: List[Tuple[str, Any, Any, List[Any]]] = []
        self.update_result = (0, 0)
        self._next_id = 0

    def run(self, handler: Callable[[Message], Any], payload: bytes, key: Optional[bytes] = None,
            topic: str = "test", headers: Optional[list] = None) -> None:
        """Calls ``handler`` with one message; raises what it raises."""
        _bindings.use(self)
        try:
            handler(Message(topic, 0, 0, key, payload, headers or [], None))
        finally:
            _bindings.use(None)

    # The capabilities, as the component's imports give them.
    def config_get(self, name: str) -> Optional[str]:
        return self.config.get(name)

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def now_ms(self) -> int:
        return self.clock if self.clock is not None else int(time.time() * 1000)

    def _check(self, collection: str) -> None:
        if "documents" in self.unavailable:
            raise Unavailable("the database does not answer (TestHost)")
        if self.grants and collection not in self.grants:
            raise NotPermitted(f"collection '{collection}' is not granted")

    def insert_one(self, collection: str, document: str) -> str:
        self._check(collection)
        doc = json.loads(document)
        if not isinstance(doc, dict):
            raise Invalid("a document is a JSON object")
        if "_id" not in doc:
            self._next_id += 1
            doc["_id"] = f"test-{self._next_id}"
        docs = self.collections.setdefault(collection, [])
        if any(d.get("_id") == doc["_id"] for d in docs):
            raise Conflict(f"_id {doc['_id']} exists")
        docs.append(doc)
        return str(doc["_id"])

    def find(self, collection: str, filter: str, limit: int) -> List[str]:
        self._check(collection)
        wanted = json.loads(filter)
        docs = self.collections.get(collection, [])
        return [json.dumps(d) for d in docs if all(d.get(k) == v for k, v in wanted.items())][:limit]

    def update_many(self, collection: str, filter: str, update: str, array_filters: List[str]) -> Tuple[int, int]:
        self._check(collection)
        self.updates.append((collection, json.loads(filter), json.loads(update), [json.loads(f) for f in array_filters]))
        return self.update_result

    def update_each(self, collection: str, statements: List[Tuple[str, str, List[str]]]) -> Tuple[int, int]:
        self._check(collection)
        for filter, update, array_filters in statements:
            self.update_many(collection, filter, update, array_filters)
        return self.update_result

    def send(self, to: List[str], subject: str, body: str) -> None:
        if "mail" in self.unavailable:
            raise Unavailable("the SMTP server does not answer (TestHost)")
        if not self.mail_allowed:
            raise NotPermitted("mail is not granted")
        if not to or any("@" not in a for a in to):
            raise Invalid(f"bad recipients {to!r}")
        self.mails.append({"to": to, "subject": subject, "body": body})
