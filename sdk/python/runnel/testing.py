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
``host.updates`` and answered with ``update_result``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import Message, _bindings


class TestHost:
    __test__ = False  # not a pytest test class

    def __init__(self, config: Optional[Dict[str, str]] = None, now_ms: Optional[int] = None,
                 grants: Optional[List[str]] = None) -> None:
        self.config = dict(config or {})
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

    def insert_one(self, collection: str, document: str) -> str:
        doc = json.loads(document)
        if "_id" not in doc:
            self._next_id += 1
            doc["_id"] = f"test-{self._next_id}"
        self.collections.setdefault(collection, []).append(doc)
        return str(doc["_id"])

    def find(self, collection: str, filter: str, limit: int) -> List[str]:
        wanted = json.loads(filter)
        docs = self.collections.get(collection, [])
        return [json.dumps(d) for d in docs if all(d.get(k) == v for k, v in wanted.items())][:limit]

    def update_many(self, collection: str, filter: str, update: str, array_filters: List[str]) -> Tuple[int, int]:
        self.updates.append((collection, json.loads(filter), json.loads(update), [json.loads(f) for f in array_filters]))
        return self.update_result

    def send(self, to: List[str], subject: str, body: str) -> None:
        self.mails.append({"to": to, "subject": subject, "body": body})
