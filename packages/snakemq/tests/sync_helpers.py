"""Test helpers: peers whose loop runs in a thread, and waiting on events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.message import Message
from snakemq.storage import QueuesStorage

WAIT = 15.0
"""Generous upper bound for anything a test waits for on loopback."""


class Recorder:
    """Collects callback calls; tests wait for a condition on them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: dict[str, list[tuple[Any, ...]]] = {}

    def hook(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self.cond:
                self.calls.setdefault(name, []).append(args)
                self.cond.notify_all()

        return record

    def get(self, name: str) -> list[tuple[Any, ...]]:
        with self.cond:
            return list(self.calls.get(name, []))

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or predicate}: {self.calls}")
                self.cond.wait(left)

    def wait_count(self, name: str, n: int, timeout: float = WAIT) -> list[tuple[Any, ...]]:
        self.wait(lambda: len(self.calls.get(name, [])) >= n, timeout, f"{n} x {name}")
        return self.get(name)


class Peer:
    """Link + Packeter + Messaging with every callback recorded; the loop runs
    in a thread between ``start()`` and ``stop()``."""

    def __init__(
        self,
        ident: str,
        storage: QueuesStorage | None = None,
        *,
        link: snakemq.link.Link | None = None,
        transport: snakemq.link.LinkLike | None = None,
        **options: Any,
    ) -> None:
        self.ident = ident
        self.link = link or snakemq.link.Link()
        self.link.reconnect_interval = 0.1
        self.packeter = snakemq.packeter.Packeter(transport or self.link)
        self.messaging = snakemq.messaging.Messaging(ident, "", self.packeter, storage, **options)
        self.rec = Recorder()
        m = self.messaging
        for name in (
            "on_connect",
            "on_disconnect",
            "on_message_recv",
            "on_message_sent",
            "on_message_delivered",
            "on_message_drop",
            "on_error",
        ):
            getattr(m, name).add(self.rec.hook(name))
        self._thread: threading.Thread | None = None
        self.loop_error: BaseException | None = None

    def listen(self, host: str = "127.0.0.1", **kw: Any) -> int:
        port: int = self.link.add_listener((host, 0), **kw)[1]
        return port

    def connect(self, port: int, host: str = "127.0.0.1", **kw: Any) -> None:
        self.link.add_connector((host, port), **kw)

    def start(self) -> Peer:
        def run() -> None:
            try:
                self.link.loop(poll_timeout=0.5)
            except BaseException as exc:  # pragma: no cover - reported by stop()
                self.loop_error = exc
                raise

        running = threading.Event()

        def before_select() -> None:  # a deadline hook runs right before select()
            running.set()

        self.link.add_deadline_hook(before_select)
        self._thread = threading.Thread(target=run, name=f"loop-{self.ident}", daemon=True)
        self._thread.start()
        # a stop() before loop() started would be forgotten: wait for the loop
        assert running.wait(WAIT), "the loop did not start"
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.link.stop()
            self._thread.join(WAIT)
            assert not self._thread.is_alive(), "loop did not stop"
            self._thread = None
        self.link.cleanup()
        assert self.loop_error is None, self.loop_error

    def connected_to(self, ident: str) -> bool:
        return any(args[1] == ident for args in self.rec.get("on_connect")) and (
            ident in self.messaging.connected_idents()
        )

    def wait_connected(self, *idents: str) -> None:
        self.rec.wait(
            lambda: all(i in self.messaging.connected_idents() for i in idents),
            what=f"{self.ident} connected to {idents}",
        )

    def received(self) -> list[bytes]:
        return [args[2].data for args in self.rec.get("on_message_recv")]

    def send(self, ident: str, data: bytes, **kw: Any) -> Message:
        message = Message(data, **kw)
        self.messaging.send_message(ident, message)
        return message
