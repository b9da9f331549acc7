"""``Connections``: every open connection of a ``Messaging`` and its two tasks.

Per connection a *reader* (``stream.receive()`` -> ``engine.receive_data``)
and a *writer* (``engine.data_to_send`` -> ``stream.send`` ->
``engine.data_sent``).  The writer sleeps on the connection's ``Wakeup``,
which is set after every engine call that can produce output for it.

Closing: the engine's ``CloseConnection`` asks for what is left to be written
first, within ``CLOSE_FLUSH_TIMEOUT``.  A close for an error (keepalive,
a protocol error: ``ErrorOccurred`` came first) does not wait for the peer:
if the writer is blocked because the socket's send buffer is full (the peer
stopped reading, or the network went silent) the connection is closed at
once, else what is left gets ``ERROR_CLOSE_FLUSH_TIMEOUT``.  Either way the
connection's end is reported (``PeerDisconnected``) as soon as its tasks end.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import ByteStream
from snakemq_proto import Engine, Event

from ._inbox import Inbox
from ._stream import MessagingEvent, ReadingPaused, ReadingResumed
from ._wakeup import Wakeup

__all__ = [
    "CLOSE_FLUSH_TIMEOUT",
    "ERROR_CLOSE_FLUSH_TIMEOUT",
    "RECEIVE_SIZE",
    "Connection",
    "Connections",
    "close_stream",
]

log = logging.getLogger("snakemq.anyio")

RECEIVE_SIZE = 262144
"""Bytes asked for per ``stream.receive()``."""

CLOSE_FLUSH_TIMEOUT = 2.0
"""Seconds a closing connection may spend writing what it still has."""

ERROR_CLOSE_FLUSH_TIMEOUT = 0.1
"""The same for a connection closed for an error, if its writer was not
already blocked on a full send buffer (then it is closed at once)."""

_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Connection:
    """The I/O side of one connection."""

    __slots__ = (
        "closing",
        "conn_id",
        "held_for",
        "ident",
        "identified",
        "redial_when",
        "scope",
        "sending",
        "stream",
        "wakeup",
    )

    def __init__(self, conn_id: str, stream: ByteStream) -> None:
        self.conn_id = conn_id
        self.stream = stream
        self.scope = anyio.CancelScope()
        self.ident: str | None = None
        self.identified = False
        self.closing = False
        self.sending = False  # the writer is in stream.send()
        self.wakeup = Wakeup()  # the writer sleeps on it
        # RedialHeld: the connector that made it waits for this event, set
        # when the peer ``held_for`` disconnects
        self.held_for: str | None = None
        self.redial_when: anyio.Event | None = None

    def kick(self) -> None:
        """The engine may have output for this connection."""
        self.wakeup.set()


class Connections:
    """The open connections of one ``Messaging``, by connection id.

    Args:
        engine: the protocol engine.
        inbox: the receive buffer (readers pause while it is full).
        dispatch: handles the engine's events.
        publish: sends an event to ``Messaging.events()`` subscribers.
        wake_timer: the engine's next deadline may have moved.
        request_flush: the engine may have storage changes (``None``: no storage).
        is_running: whether the ``Messaging`` still takes new connections.
    """

    def __init__(
        self,
        engine: Engine,
        inbox: Inbox,
        *,
        dispatch: Callable[[list[Event]], None],
        publish: Callable[[MessagingEvent], None],
        wake_timer: Callable[[], None],
        request_flush: Callable[[], None] | None,
        is_running: Callable[[], bool],
    ) -> None:
        self._engine = engine
        self._inbox = inbox
        self._dispatch = dispatch
        self._publish = publish
        self._wake_timer = wake_timer
        self._request_flush = request_flush
        self._is_running = is_running
        self._seq = itertools.count(1)
        self.by_id: dict[str, Connection] = {}
        self.changed = Wakeup()  # a connection ended

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def get(self, conn_id: str) -> Connection | None:
        return self.by_id.get(conn_id)

    def new_id(self) -> str:
        return f"c{next(self._seq)}"

    def kick_all(self) -> None:
        for conn in self.by_id.values():
            conn.kick()

    def close(self, conn_id: str, *, error: bool) -> None:
        """The engine said ``CloseConnection`` (after ``ErrorOccurred`` when
        ``error``): write what is left, within a bound, and close."""
        conn = self.by_id.get(conn_id)
        if conn is None or conn.closing:
            return
        conn.closing = True
        if error and conn.sending:
            # the send buffer is full: the peer is not reading, nothing to wait for
            conn.scope.cancel()
            return
        flush = ERROR_CLOSE_FLUSH_TIMEOUT if error else CLOSE_FLUSH_TIMEOUT
        conn.scope.deadline = min(conn.scope.deadline, anyio.current_time() + flush)
        conn.kick()

    async def wait_all_closed(self) -> None:
        while self.by_id:
            await self.changed.wait()

    async def run(
        self, conn_id: str, stream: ByteStream, names: frozenset[str] | None, outbound: bool
    ) -> Connection | None:
        """Run one connection (TLS already set up) to its end; return it
        (``None``: the ``Messaging`` was closing)."""
        if not self._is_running():
            await close_stream(stream)
            return None
        engine = self._engine
        conn = Connection(conn_id, stream)
        self.by_id[conn_id] = conn
        engine.connection_made(conn_id, time.monotonic(), cert_idents=names, outbound=outbound)
        self._wake_timer()
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader, conn)
                    tg.start_soon(self._writer, conn)
        finally:
            await close_stream(stream)
            del self.by_id[conn_id]
            self.changed.set()
            self._dispatch(engine.connection_lost(conn_id, time.monotonic()))
            self._wake_timer()
            if self._request_flush is not None:
                self._request_flush()
        return conn

    async def _reader(self, conn: Connection) -> None:
        engine = self._engine
        stream = conn.stream
        conn_id = conn.conn_id
        inbox = self._inbox
        dispatch = self._dispatch
        request_flush = self._request_flush
        keepalive = engine.keepalive_interval is not None
        monotonic = time.monotonic
        try:
            while True:
                data = await stream.receive(RECEIVE_SIZE)
                if inbox.full():
                    # another reader filled the inbox while this one waited for
                    # its bytes: hold them undecoded (~130 B a message, ~4x
                    # less than decoded) rather than let every connection add
                    # a chunk of messages to a full inbox (400 peers: 100k)
                    await self._pause(conn)
                events = engine.receive_data(conn_id, data, monotonic())
                if events:
                    dispatch(events)
                # not kept alive while this task waits: with many connections
                # every reader would hold its last chunk of messages (400
                # peers: the whole traffic) after the application took them
                del data, events
                conn.kick()
                if keepalive and engine.read_moved_deadline(conn_id):
                    # an answered ping brings the next ping deadline forward
                    self._wake_timer()
                if request_flush is not None:
                    request_flush()
                if conn.closing:
                    return
                if inbox.full():
                    await self._pause(conn)
        except (anyio.EndOfStream, *_STREAM_ERRORS):
            pass
        conn.scope.cancel()

    async def _pause(self, conn: Connection) -> None:
        """Stop reading ``conn`` until the inbox drained to its low-water mark."""
        self._publish(ReadingPaused(conn.conn_id, conn.ident))
        await self._inbox.wait_for_space()
        self._publish(ReadingResumed(conn.conn_id, conn.ident))

    async def _writer(self, conn: Connection) -> None:
        engine = self._engine
        stream = conn.stream
        conn_id = conn.conn_id
        dispatch = self._dispatch
        request_flush = self._request_flush
        monotonic = time.monotonic
        try:
            while True:
                data = engine.data_to_send(conn_id)
                if data:
                    if engine.writing(conn_id, monotonic()):  # the write-stall rule
                        self._wake_timer()
                    conn.sending = True
                    try:
                        await stream.send(data)
                    finally:
                        conn.sending = False
                    events = engine.data_sent(conn_id, len(data))
                    if events:
                        dispatch(events)
                        if request_flush is not None:
                            request_flush()
                    del events  # (as in the reader: not held while waiting)
                    continue
                if conn.closing:
                    break
                await conn.wakeup.wait()
        except _STREAM_ERRORS:
            pass
        conn.scope.cancel()


async def close_stream(stream: ByteStream) -> None:
    """Close ``stream`` (shielded, bounded, errors ignored)."""
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLOSE_FLUSH_TIMEOUT),
        contextlib.suppress(*_STREAM_ERRORS),
    ):
        await stream.aclose()
