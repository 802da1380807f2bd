"""The component's entry point (componentize-py's `WitWorld` of the
`batch-stream-function` world): turns the host's record into a
`runnel.Message`, calls the function registered in the function's `app`
module, and turns its exceptions into the world's `handler-error`;
`handle-batch` does so for each record of a batch in turn. Built in by the
Runnel build; not imported by functions."""

import inspect
import sys
import traceback
from typing import List

import wit_world
from componentize_py_types import Err
from wit_world.imports import batch, clock, config, documents, logging, mail, types

import runnel
from runnel import _bindings
import app  # noqa: F401  (registers the function)

# Imported here, while the component is built: modules are not found later.
_bindings.use_component(Err, clock, config, documents, logging, mail)

_handle = runnel._registered()


class WitWorld(wit_world.WitWorld):
    def handle_batch(self, messages: List[types.Message]) -> None:
        # Each record in its turn, its capability calls journaled as its own
        # (`batch.begin`); the first the function declines ends the batch,
        # named with its error. A bug traps, as in `handle`.
        for index, message in enumerate(messages):
            batch.begin(index)
            try:
                self.handle(message)
            except Err as e:
                raise Err((index, e.value))

    def handle(self, message: types.Message) -> None:
        msg = runnel.Message(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=None if message.key is None else bytes(message.key),
            payload=bytes(message.payload),
            headers=[runnel.Header(h.key, bytes(h.value)) for h in message.headers],
            timestamp_ms=message.timestamp_ms,
        )
        try:
            result = _handle(msg)
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError("the function is async: a Runnel function is synchronous (its capabilities are)")
        except runnel.BadInput as e:
            raise Err(types.HandlerError_BadInput(str(e)))
        except runnel.RetryLater as e:
            raise Err(types.HandlerError_RetryLater(str(e)))
        except runnel.GiveUp as e:
            raise Err(types.HandlerError_GiveUp(str(e)))
        except Exception:
            # A bug in the function: its traceback goes to the log (stderr),
            # and the call traps.
            traceback.print_exc(file=sys.stderr)
            raise
