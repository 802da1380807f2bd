"""The small capabilities: configuration, logging and the host's clock.

Outside a component (in tests on a developer's machine) they run against
:mod:`runnel.testing`'s in-memory host.
"""

from __future__ import annotations

from typing import Optional

from . import _bindings


def config(name: str) -> Optional[str]:
    """The manifest's configuration value ``name``, or None when it has none."""
    return _bindings.host().config_get(name)


def log(message: str, level: str = "info") -> None:
    """A log line, written by the host with the function's name.

    ``level`` is one of trace, debug, info, warn, error.
    """
    _bindings.host().log(level, message)


def now_ms() -> int:
    """The host's clock, in milliseconds since the Unix epoch. Journaled: a
    record handled again reads the time its first handling read."""
    return _bindings.host().now_ms()
