"""A test fixture: the Python twin of tests/fixtures/probe. Does what the
record's payload says; what the sandbox let it do comes back as the text of
a give-up (``GiveUp``)."""

import os
import socket
import sys

import runnel


def attempt(fn):
    try:
        return f"Ok({fn()!r})"
    except BaseException as e:  # noqa: BLE001 - the test reads what happened
        return f"Err({type(e).__name__}: {e})"


@runnel.function
def handle(message: runnel.Message) -> None:
    verb, _, arg = message.text().partition(":")
    if verb == "ok":
        return
    if verb == "bad-input":
        raise runnel.BadInput("asked for bad-input")
    if verb == "insert":
        # One document naming the record, into the collection `arg`.
        runnel.documents.insert_one(arg, {"offset": message.offset})
        return
    if verb == "retry":
        raise runnel.RetryLater("asked to retry")
    if verb == "read-file":
        raise runnel.GiveUp(attempt(lambda: open(arg).read()))
    if verb == "list-dir":
        raise runnel.GiveUp(attempt(lambda: os.listdir(arg)))
    if verb == "env":
        raise runnel.GiveUp(f"{attempt(lambda: os.environ[arg])} of {len(os.environ)} variables")
    if verb == "connect":
        host, _, port = arg.rpartition(":")
        raise runnel.GiveUp(attempt(lambda: socket.create_connection((host, int(port)), timeout=2) and "connected"))
    if verb == "update-each":
        # Two updates of nothing in particular, in one call.
        updates = [({"probe": True}, {"$set": {"seen": 1}}), ({"probe": True}, {"$inc": {"count": 1}}, [])]
        raise runnel.GiveUp(attempt(lambda: runnel.documents.update_each(arg, updates)))
    if verb == "print":
        line = "x" * 1023 + "\n"
        for _ in range(int(arg) * 1024):
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    if verb == "trap":
        raise ValueError("asked to trap")
    raise runnel.BadInput(f"unknown command {verb!r}")
