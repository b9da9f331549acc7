"""What every conformance driver shares: the line protocol and the bookkeeping.

Standard library only: the legacy driver runs this module in snakeMQ 1.6's own
virtual environment.  Nothing here imports an implementation.

A driver reads one JSON command per line on stdin and answers each with one
JSON line on stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``);
the protocol is documented in ``conformance/README.md``.  Everything else a
driver or its implementation prints goes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any, TextIO

EVENT_KINDS = (
    "connected",
    "disconnected",
    "received",
    "sent",
    "delivered",
    "dropped",
    "errors",
    "executed",  # an RPC method ran on this peer's server (ident: the method name)
    "rpc_errors",  # an ERROR record of the implementation's ``snakemq.rpc`` loggers
    "loop_restarts",  # legacy driver only: a 1.6 socket error escaped loop(), see _tutorial_driver
)

_block_cache: dict[tuple[str, int], bytes] = {}


def payload(seed: str, index: int, size: int) -> bytes:
    """The deterministic payload number ``index`` of a batch: both ends can
    recompute it, and its digest proves it arrived byte-identical."""
    block = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=64).digest()
    return (block * (size // 64 + 1))[:size]


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Recorder:
    """Everything a peer saw, safe to update from one thread and read from another."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.received: list[list[Any]] = []  # [from_ident, uuid_hex, digest, size, ttl]
        self.sent: list[list[Any]] = []  # [to_ident, uuid_hex, digest, size]
        self.dropped: list[list[str]] = []  # [ident, uuid_hex]
        self.delivered: list[list[str]] = []  # [ident, uuid_hex]
        self.errors: list[str] = []
        self.executed: list[list[str]] = []  # [method, repr(args), repr(kwargs)]
        self.loop_error: str | None = None
        self.listeners: list[Callable[[], None]] = []
        self.journal: IO[str] | None = None
        self.kill_after: int | None = None

    def journal_to(self, path: str, kill_after: int | None = None) -> None:
        """Also append every received message to ``path``, one JSON line each,
        written to the OS at once: the record survives a SIGKILL of this
        process, so the suite can count what a killed receiver handed over.

        With ``kill_after``, the process SIGKILLs itself right after the
        line of that many messages received in this life: a kill that lands
        mid-stream by construction.  A kill sent by the suite once a ``wait``
        answered lands when the suite gets to it, which on a loaded machine
        can be after the whole stream arrived."""
        self.journal = open(path, "a")  # noqa: SIM115 - lives as long as the process
        if kill_after is not None and kill_after < 1:
            raise ValueError(f"kill_after must be at least 1, got {kill_after!r}")
        self.kill_after = kill_after

    def _changed(self) -> None:
        self.cond.notify_all()
        for listener in self.listeners:
            listener()

    def event(self, kind: str, ident: str | None) -> None:
        with self.cond:
            self.counts[(kind, ident or "")] += 1
            self._changed()

    def on_received(self, ident: str, uuid: bytes, data: bytes, ttl: float | None) -> None:
        with self.cond:
            entry = [ident, uuid.hex(), digest(data), len(data), ttl]
            self.received.append(entry)
            if self.journal is not None:
                self.journal.write(json.dumps(entry) + "\n")
                self.journal.flush()
                if self.kill_after is not None and len(self.received) >= self.kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            self.counts[("received", ident)] += 1
            self._changed()

    def on_sent(self, to: str, uuid: bytes, data: bytes) -> None:
        with self.cond:
            self.sent.append([to, uuid.hex(), digest(data), len(data)])

    def on_dropped(self, ident: str, uuid: bytes) -> None:
        with self.cond:
            self.dropped.append([ident, uuid.hex()])
            self.counts[("dropped", ident)] += 1
            self._changed()

    def on_delivered(self, ident: str, uuid: bytes) -> None:
        with self.cond:
            self.delivered.append([ident, uuid.hex()])
            self.counts[("delivered", ident)] += 1
            self._changed()

    def on_error(self, text: str) -> None:
        with self.cond:
            self.errors.append(text)
            self.counts[("errors", "")] += 1
            self._changed()

    def on_executed(self, method: str, args: Any, kwargs: Any) -> None:
        """An RPC method of the served object ran (``repr`` keeps the types
        the serializer delivered: a tuple stays a tuple only under pickle)."""
        with self.cond:
            self.executed.append([method, repr(args), repr(kwargs)])
            self.counts[("executed", method)] += 1
            self._changed()

    def on_loop_error(self, text: str) -> None:
        with self.cond:
            self.loop_error = text
            self._changed()

    def value(self, kind: str, ident: str | None) -> int:
        """How many ``kind`` events so far, from/to ``ident`` or from anyone."""
        with self.cond:
            if ident is None:
                return sum(n for (k, _), n in self.counts.items() if k == kind)
            return self.counts[(kind, ident)]

    def wait(self, kind: str, ident: str | None, count: int, timeout: float) -> dict[str, Any]:
        """Block the calling thread until ``value() >= count``, the timeout, or
        the death of the implementation's loop (nothing will come any more)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = self.value(kind, ident)
                if value >= count:
                    return {"ok": True, "value": value}
                if self.loop_error is not None:
                    return {"ok": False, "error": "the loop died", "value": value}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {"ok": False, "error": "timeout", "value": value}
                self.cond.wait(remaining)

    def report(self) -> dict[str, Any]:
        with self.cond:
            return {
                "ok": True,
                "received": list(self.received),
                "sent": list(self.sent),
                "dropped": list(self.dropped),
                "delivered": list(self.delivered),
                "errors": list(self.errors),
                "executed": list(self.executed),
                "loop_error": self.loop_error,
                "counts": {f"{k}:{i}": n for (k, i), n in self.counts.items()},
            }


def check_wait_args(cmd: dict[str, Any]) -> tuple[str, str | None, int, float]:
    kind = cmd["what"]
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; use one of {EVENT_KINDS}")
    return kind, cmd.get("ident"), int(cmd.get("count", 1)), float(cmd.get("timeout", 30.0))


class LineChannel:
    """stdout reserved for answers; a lock so that threads never interleave lines."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._lock = threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def quiet_stdout() -> TextIO:
    """Keep the real stdout for the protocol and point ``sys.stdout`` at stderr,
    so that a stray ``print`` in an implementation cannot corrupt the channel."""
    real = sys.stdout
    sys.stdout = sys.stderr
    return real


def log(*parts: object) -> None:
    print("[driver]", *parts, file=sys.stderr, flush=True)
