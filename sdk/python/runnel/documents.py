"""Documents in the host's database, limited to the collections the manifest
grants (``[capabilities.documents]``). Documents, filters and updates are
dicts, sent as MongoDB Extended JSON: ``date(ms)`` makes a date.

Every call is journaled per record: a record handled again gets the answers
its earlier handling got, and its writes are not done twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import _bindings


@dataclass(frozen=True)
class UpdateResult:
    matched: int
    modified: int


def insert_one(collection: str, document: Dict[str, Any]) -> str:
    """Inserts ``document`` and returns its ``_id`` (the host derives one from
    the record when the document has none)."""
    return _bindings.host().insert_one(collection, json.dumps(document))


def find(collection: str, filter: Optional[Dict[str, Any]] = None, limit: int = 100) -> List[Dict[str, Any]]:
    """Up to ``limit`` (at most 1000) documents matching ``filter``."""
    found = _bindings.host().find(collection, json.dumps(filter or {}), limit)
    return [json.loads(text) for text in found]


def update_many(
    collection: str,
    filter: Dict[str, Any],
    update: Dict[str, Any],
    array_filters: Iterable[Dict[str, Any]] = (),
) -> UpdateResult:
    """Applies ``update`` to every document matching ``filter``;
    ``array_filters`` name the ``$[identifier]`` paths of the update."""
    matched, modified = _bindings.host().update_many(
        collection, json.dumps(filter), json.dumps(update), [json.dumps(f) for f in array_filters]
    )
    return UpdateResult(matched, modified)


def update_each(collection: str, updates: Iterable[Sequence[Any]]) -> UpdateResult:
    """Applies several updates to ``collection`` in one request to the
    database, in order: each is ``(filter, update)`` or ``(filter, update,
    array_filters)``, as for :func:`update_many`. The result sums theirs;
    when one fails, the error names it, the ones before it are applied and
    the ones after it are not."""
    statements = []
    for i, u in enumerate(updates):
        u = tuple(u)
        if len(u) not in (2, 3):
            raise TypeError(f"update {i}: expected (filter, update) or (filter, update, array_filters), got {len(u)} items")
        filter, update, array_filters = u if len(u) == 3 else (*u, ())
        statements.append((json.dumps(filter), json.dumps(update), [json.dumps(f) for f in array_filters]))
    matched, modified = _bindings.host().update_each(collection, statements)
    return UpdateResult(matched, modified)


def date(ms: int) -> Dict[str, Any]:
    """An Extended JSON date, ``ms`` milliseconds after the Unix epoch."""
    return {"$date": {"$numberLong": str(ms)}}
