"""Write Runnel functions in Python.

A function is a module ``app.py`` with one function decorated with
``@runnel.function``; it receives a :class:`Message` for every Kafka record.
Returning lets the host commit the record. Raising tells the host what to do:

- :class:`BadInput`: the record can never be handled; it goes to the
  dead-letter topic and the next record follows.
- :class:`RetryLater`: a passing failure; the host retries the record later.
- :class:`GiveUp`: the function cannot go on (e.g. its configuration is
  wrong); the host stops feeding it until another version is deployed.

Capability errors are these exceptions too, so an error left uncaught does the
right thing: :class:`Unavailable` is a :class:`RetryLater`;
:class:`NotPermitted`, :class:`Invalid` and :class:`Conflict` are
:class:`GiveUp`. Any other exception is a bug in the function: its traceback
goes to the function's log, and the host retries the record a few times,
then dead-letters it.

The function reaches the outside only through :mod:`runnel.documents`,
:mod:`runnel.mail`, :func:`config`, :func:`log` and :func:`now_ms`, each
checked by the host against the grants in the function's ``runnel.toml``.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = [
    "function", "Message", "Header", "BadInput", "RetryLater", "GiveUp",
    "Unavailable", "NotPermitted", "Invalid", "Conflict",
    "documents", "mail", "config", "log", "now_ms",
]


class HandlerError(Exception):
    """Why a record was not handled; see the module documentation."""


class BadInput(HandlerError):
    """The record can never be handled: the host dead-letters it."""


class RetryLater(HandlerError):
    """A passing failure: the host retries the record later."""


class GiveUp(HandlerError):
    """The function cannot go on until another version is deployed."""


class Unavailable(RetryLater):
    """A service behind a capability did not answer (worth a retry)."""


class NotPermitted(GiveUp):
    """The manifest does not grant this collection or capability."""


class Invalid(GiveUp):
    """The document, filter, update or message is not valid."""


class Conflict(GiveUp):
    """A document with the same ``_id`` already exists."""


@dataclass(frozen=True)
class Header:
    key: str
    value: bytes


@dataclass(frozen=True)
class Message:
    """One Kafka record."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    payload: bytes
    headers: list
    timestamp_ms: Optional[int]

    def text(self) -> str:
        """The payload as UTF-8 text; :class:`BadInput` when it is not."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(f"the payload is not UTF-8: {e}") from None

    def json(self) -> Any:
        """The payload parsed as JSON; :class:`BadInput` when it is not."""
        try:
            return _json.loads(self.payload)
        except ValueError as e:
            raise BadInput(f"the payload is not JSON: {e}") from None

    def header(self, key: str) -> Optional[bytes]:
        """The value of the first header named ``key``."""
        for header in self.headers:
            if header.key == key:
                return header.value
        return None


_handler: Optional[Callable[[Message], Any]] = None


def function(handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """Registers ``handler`` as the function's entry point (once per module)."""
    global _handler
    if _handler is not None:
        raise RuntimeError("a Runnel function has one @runnel.function")
    _handler = handler
    return handler


def _registered() -> Callable[[Message], Any]:
    if _handler is None:
        raise RuntimeError("app.py has no function decorated with @runnel.function")
    return _handler


# What a capability's error variant becomes, by the name of its case.
_ERRORS = {"NotPermitted": NotPermitted, "Invalid": Invalid, "Conflict": Conflict, "Unavailable": Unavailable}


def _capability_error(err: Any) -> HandlerError:
    """The exception for a capability's error variant (``DocumentError_Invalid``…)."""
    case = type(err).__name__.rsplit("_", 1)[-1]
    return _ERRORS.get(case, GiveUp)(getattr(err, "value", str(err)))


from . import documents, mail  # noqa: E402  (they use the classes above)
from ._host import config, log, now_ms  # noqa: E402
