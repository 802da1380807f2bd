"""E-mail through the host's SMTP relay, when the manifest grants it
(``[capabilities.mail] enabled = true``). The sender is the host's address.
A record handled again does not mail again."""

from __future__ import annotations

from typing import Iterable, Union

from . import _bindings


def send(to: Union[str, Iterable[str]], subject: str, body: str) -> None:
    """Sends one message to ``to`` (an address or several)."""
    recipients = [to] if isinstance(to, str) else list(to)
    _bindings.host().send(recipients, subject, body)
