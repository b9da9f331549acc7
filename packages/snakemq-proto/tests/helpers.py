"""A fake network and a fake clock for engine tests: bytes in, events out.

``Link`` joins one connection of engine A to one connection of engine B.
Nothing moves until the test says so: ``pump()`` shuttles bytes both ways
until the link is quiet, ``disconnect()`` drops whatever was in transit and
tells both engines the socket is gone.  Every event lands in the ``Side``
that produced it, so a test can assert on exactly what each peer saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TypeVar

import attrs
from snakemq_proto import (
    CloseConnection,
    Engine,
    Event,
    Frame,
    Message,
    MessageReceived,
    PacketDecoder,
    decode_frame,
    encode_packet,
)

E = TypeVar("E")

_conn_numbers = itertools.count(1)


@attrs.define
class Clock:
    """Time is whatever the test says it is."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@attrs.define(eq=False)
class Side:
    """One engine's end of a ``Link`` and everything it reported."""

    engine: Engine
    conn_id: str
    events: list[Event] = attrs.field(factory=list)
    received: list[Message] = attrs.field(factory=list)
    unhanded: int = 0  # MessageReceived not yet reported with handed()
    close_requested: bool = False
    lost: bool = False

    def of_type(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def record(self, events: Iterable[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, MessageReceived) and event.conn_id == self.conn_id:
                self.received.append(event.message)
                self.unhanded += 1
            elif isinstance(event, CloseConnection) and event.conn_id == self.conn_id:
                self.close_requested = True

    def hand(self) -> None:
        """Tell the engine the application has every message received so far."""
        if self.unhanded:
            n, self.unhanded = self.unhanded, 0
            self.engine.handed(self.conn_id, n)


class Link:
    """A connection between two engines over an in-memory pipe.

    Args:
        auto_hand: call ``handed()`` right after every batch of received
            messages (what a synchronous I/O layer does).
    """

    def __init__(self, a: Engine, b: Engine, clock: Clock, *, auto_hand: bool = True) -> None:
        n = next(_conn_numbers)
        self.clock = clock
        self.a = Side(a, f"{a.ident}>{b.ident}#{n}")
        self.b = Side(b, f"{b.ident}>{a.ident}#{n}")
        self.auto_hand = auto_hand
        self.connected = False

    def connect(self) -> Link:
        now = self.clock.now
        self.a.engine.connection_made(self.a.conn_id, now)
        self.b.engine.connection_made(self.b.conn_id, now)
        self.connected = True
        return self

    def other(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def transfer(self, src: Side, limit: int | None = None) -> int:
        """Move the bytes ``src`` has to send (at most ``limit``) to the other
        side; the rest of an over-long buffer is lost, as a socket reset would
        lose it.  Returns the number of bytes delivered."""
        dst = self.other(src)
        data = src.engine.data_to_send(src.conn_id)
        if not data:
            return 0
        if limit is not None:
            data = data[:limit]
        src.record(src.engine.data_sent(src.conn_id, len(data)))
        dst.record(dst.engine.receive_data(dst.conn_id, data, self.clock.now))
        if self.auto_hand:
            dst.hand()
        return len(data)

    def pump(self, max_rounds: int = 1000) -> None:
        """Move bytes both ways until nothing moves; honour close requests."""
        for _ in range(max_rounds):
            if not self.connected:
                return
            moved = self.transfer(self.a) + self.transfer(self.b)
            if self.a.close_requested or self.b.close_requested:
                # the closing side flushes what it still has, then the socket goes
                for side in (self.a, self.b):
                    if side.close_requested:
                        self.transfer(side)
                self.disconnect()
                return
            if not moved:
                return
        raise AssertionError(f"link did not settle in {max_rounds} rounds")

    def disconnect(self) -> None:
        """Both sockets are gone; bytes in transit are lost."""
        if not self.connected:
            return
        self.connected = False
        now = self.clock.now
        for side in (self.a, self.b):
            side.record(side.engine.connection_lost(side.conn_id, now))
            side.lost = True


def frames_of(data: bytes) -> list[Frame | None]:
    """Decode a byte stream written by an engine into its frames."""
    decoder = PacketDecoder()
    out = [decode_frame(p) for p in decoder.feed(data)]
    assert decoder.buffered == 0, "stream ends inside a packet"
    return out


def packets(*frames: Frame | bytes) -> bytes:
    """Encode frames (or raw frame payloads) as packets."""
    return b"".join(encode_packet(f if isinstance(f, bytes) else f.encode()) for f in frames)


def of_type(events: Iterable[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]
