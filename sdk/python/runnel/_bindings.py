"""Where the capabilities are served from: the host's imports inside a
component, or a stand-in set with :func:`use` (see :mod:`runnel.testing`)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

_component: Any = None
_stand_in: Any = None


def host() -> Any:
    served = _stand_in or _component
    if served is None:
        raise RuntimeError("not inside a Runnel component: run the function with runnel.testing.TestHost")
    return served


def use(stand_in: Any) -> None:
    """Serve the capabilities from ``stand_in`` (None: the component's imports)."""
    global _stand_in
    _stand_in = stand_in


def use_component(err: Any, clock: Any, config: Any, documents: Any, logging: Any, mail: Any) -> None:
    """Serve the capabilities from the component's imports (called once by the
    component's entry point, while the component is built)."""
    global _component
    _component = Component(err, clock, config, documents, logging, mail)


class Component:
    """The `stream-function` world's imports, with their errors as exceptions."""

    def __init__(self, err: Any, clock: Any, config: Any, documents: Any, logging: Any, mail: Any) -> None:
        self._err, self._clock, self._config = err, clock, config
        self._documents, self._logging, self._mail = documents, logging, mail

    def _call(self, fn: Any, *args: Any) -> Any:
        from . import _capability_error

        try:
            return fn(*args)
        except self._err as e:
            raise _capability_error(e.value) from None

    def config_get(self, name: str) -> Optional[str]:
        return self._config.get(name)

    def log(self, level: str, message: str) -> None:
        levels = self._logging.Level
        self._logging.log(getattr(levels, level.upper(), levels.INFO), message)

    def now_ms(self) -> int:
        return self._clock.now_ms()

    def insert_one(self, collection: str, document: str) -> str:
        return self._call(self._documents.insert_one, collection, document)

    def find(self, collection: str, filter: str, limit: int) -> List[str]:
        return self._call(self._documents.find, collection, filter, limit)

    def update_many(self, collection: str, filter: str, update: str, array_filters: List[str]) -> Tuple[int, int]:
        result = self._call(self._documents.update_many, collection, filter, update, array_filters)
        return result.matched, result.modified

    def update_each(self, collection: str, statements: List[Tuple[str, str, List[str]]]) -> Tuple[int, int]:
        records = [self._documents.UpdateStatement(filter=f, update=u, array_filters=a) for f, u, a in statements]
        result = self._call(self._documents.update_each, collection, records)
        return result.matched, result.modified

    def send(self, to: List[str], subject: str, body: str) -> None:
        self._call(self._mail.send, self._mail.Message(to=to, subject=subject, body=body))
