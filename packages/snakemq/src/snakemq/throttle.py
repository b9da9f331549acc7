"""``Throttle``: a bandwidth limit per connection, between a link and a packeter.

``Packeter(Throttle(link, bytes_per_second))`` works as ``Packeter(link)`` does,
``Messaging`` included: the throttle offers everything a ``Link`` offers
(unknown attributes are looked up on the link) and passes on only as many
bytes of each ``send`` as a token bucket allows; the layer above sends the
rest when ``on_ready_to_send`` reports the part written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from snakemq_proto import SSLConfig

from .callbacks import Callback
from .link import Address, LinkLike

__all__ = ["TIME_QUANTUM", "Throttle"]

TIME_QUANTUM = 0.05
"""Seconds of traffic the bucket can hold: the largest burst."""


class _Bucket:
    __slots__ = ("last", "pending", "tokens", "wake")

    def __init__(self, now: float) -> None:
        self.tokens = 0.0
        self.last = now
        self.pending: memoryview | None = None  # waiting for tokens
        self.wake = 0.0  # when enough tokens for `pending` are there


class Throttle:
    """Limit every connection of ``link`` to ``bytes_per_second`` outgoing bytes.

    Raises:
        ValueError: ``bytes_per_second`` is not a positive number.
    """

    def __init__(self, link: LinkLike, bytes_per_second: float) -> None:
        if (
            isinstance(bytes_per_second, bool)
            or not isinstance(bytes_per_second, int | float)
            or not bytes_per_second > 0
        ):
            raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second!r}")
        self.link = link
        self.speed = float(bytes_per_second)
        self.burst = max(1.0, self.speed * TIME_QUANTUM)
        self.chunk = max(1, min(int(self.burst), 16 * 1024))  # smallest send worth waking for

        self.on_connect: Callback[[str]] = link.on_connect
        self.on_disconnect: Callback[[str]] = link.on_disconnect
        self.on_recv: Callback[[str, bytes]] = link.on_recv
        self.on_recv_view: Callback[[str, memoryview]] = link.on_recv_view
        self.on_loop_pass: Callback[[]] = link.on_loop_pass
        self.on_ready_to_send: Callback[[str, int]] = Callback()

        self._buckets: dict[str, _Bucket] = {}
        self._waiting: set[str] = set()
        link.on_connect.add(self._on_connect)
        link.on_disconnect.add(self._on_disconnect)
        link.on_ready_to_send.add(self.on_ready_to_send)
        link.on_loop_pass.add(self._on_loop_pass)
        link.add_deadline_hook(self._next_deadline)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.link, name)

    # ------------------------------------------------------ LinkLike API

    def send(self, conn_id: str, data: bytes | memoryview) -> None:
        """Send as much of ``data`` as the bucket allows now, the rest later."""
        bucket = self._buckets.get(conn_id)
        if bucket is None:
            self.link.send(conn_id, data)  # raises NoConnection
            return
        view = data if isinstance(data, memoryview) else memoryview(data)
        self._try(conn_id, bucket, view, time.monotonic())

    def close(self, conn_id: str, final_data: bytes | memoryview = b"") -> None:
        self.link.close(conn_id, final_data)

    def wakeup_poll(self) -> None:
        self.link.wakeup_poll()

    def add_deadline_hook(self, hook: Callable[[], float | None]) -> None:
        self.link.add_deadline_hook(hook)

    def getpeercert(self, conn_id: str, binary_form: bool = False) -> Any:
        return self.link.getpeercert(conn_id, binary_form)

    def get_ssl_config(self, conn_id: str) -> SSLConfig | None:
        return self.link.get_ssl_config(conn_id)

    def is_outbound(self, conn_id: str) -> bool | None:
        return self.link.is_outbound(conn_id)

    def hold_redial(self, conn_id: str) -> Address | None:
        return self.link.hold_redial(conn_id)

    def release_redial(self, address: Address) -> None:
        self.link.release_redial(address)

    def identified(self, conn_id: str) -> None:
        self.link.identified(conn_id)

    def set_gate(self, gate: Callable[[], bool], interval: float) -> None:
        self.link.set_gate(gate, interval)

    def stop(self) -> None:
        self.link.stop()

    # ----------------------------------------------------------- internal

    def _try(self, conn_id: str, bucket: _Bucket, view: memoryview, now: float) -> None:
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.speed)
        bucket.last = now
        need = min(len(view), self.chunk)
        if bucket.tokens >= need:
            size = min(len(view), int(bucket.tokens))
            bucket.tokens -= size
            bucket.pending = None
            self._waiting.discard(conn_id)
            self.link.send(conn_id, view[:size])
            return
        bucket.pending = view
        bucket.wake = now + (need - bucket.tokens) / self.speed
        self._waiting.add(conn_id)

    def _on_connect(self, conn_id: str) -> None:
        self._buckets[conn_id] = _Bucket(time.monotonic())

    def _on_disconnect(self, conn_id: str) -> None:
        self._buckets.pop(conn_id, None)
        self._waiting.discard(conn_id)

    def _next_deadline(self) -> float | None:
        if not self._waiting:
            return None
        return min(self._buckets[c].wake for c in self._waiting)

    def _on_loop_pass(self) -> None:
        if not self._waiting:
            return
        now = time.monotonic()
        for conn_id in list(self._waiting):
            bucket = self._buckets.get(conn_id)
            if bucket is None or bucket.pending is None:
                self._waiting.discard(conn_id)
            elif bucket.wake <= now:
                self._try(conn_id, bucket, bucket.pending, now)
