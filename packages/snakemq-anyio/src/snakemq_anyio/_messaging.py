"""``Messaging``: one local peer on anyio (asyncio or trio).

Theory of operation
-------------------

Every protocol rule lives in ``snakemq_proto.Engine``; this module only moves
bytes between sockets and the engine, runs its timer and applies its storage
batches.  All engine calls are synchronous and happen on the one event loop,
so no lock is needed.

Tasks, all inside the task group the ``Messaging`` owns:

* per connection a *reader* (``stream.receive()`` -> ``engine.receive_data``)
  and a *writer* (``engine.data_to_send`` -> ``stream.send`` ->
  ``engine.data_sent``), the writer sleeping on a per-connection wake-up event
  that is set after every engine call that can produce output;
* one *timer* that sleeps until ``engine.next_deadline()`` (or until woken
  because a deadline may have moved) and calls ``engine.handle_timeout``;
* one *flusher* that takes ``engine.take_storage_batch()`` and applies it in a
  worker thread, one batch at a time, so batches are applied in order and all
  changes made while one commits go into the next (group commit);
* one *acker* that calls ``engine.handed()`` for the messages the application
  took with ``receive()`` since it last ran (acknowledgements are batched);
* per listener an accept loop, per connector a connect/reconnect loop.

Time given to the engine is ``time.monotonic()`` throughout; the timer turns
deadlines into relative sleeps.

Backpressure: received messages wait in one bounded buffer.  A reader that
finds the buffer over its limit stops reading its socket until the
application drained it to the low-water mark; the sender's window (messages
are acknowledged only once taken) and TCP then hold the sender back.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketAttribute, SocketListener
from anyio.streams.tls import TLSAttribute, TLSStream
from snakemq_proto import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WAIT,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_WINDOW,
    FLAG_PERSISTENT,
    CloseConnection,
    Engine,
    ErrorOccurred,
    Event,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageReceived,
    MessageSent,
    PeerConnected,
    PeerDisconnected,
    QueuesStorage,
    RedialHeld,
    RemoteProtocolError,
    SqliteQueuesStorage,
    SSLConfig,
    StorageBatch,
    StorageError,
    cert_idents,
)

from ._receipt import DeliveryError, MessageDroppedError, MessagingClosedError, Receipt
from ._stream import EventStream, MessagingEvent, ReadingPaused, ReadingResumed

log = logging.getLogger("snakemq.anyio")
_monotonic = time.monotonic

RECEIVE_SIZE = 262144
"""Bytes asked for per ``stream.receive()``."""

CLOSE_FLUSH_TIMEOUT = 2.0
"""Seconds a closing connection may spend writing what it still has."""

_T = TypeVar("_T", bound="Messaging")

_NEW, _RUNNING, _CLOSING, _CLOSED = 0, 1, 2, 3


class TLSHandshakeError(RemoteProtocolError):
    """The TLS handshake of a connection failed (reported in ``ErrorOccurred``)."""


class _Conn:
    """The I/O side of one connection."""

    __slots__ = (
        "closing",
        "conn_id",
        "held_for",
        "ident",
        "identified",
        "legacy",
        "scope",
        "stream",
        "wakeup",
    )

    def __init__(self, conn_id: str, stream: ByteStream) -> None:
        self.conn_id = conn_id
        self.stream = stream
        self.scope = anyio.CancelScope()
        self.ident: str | None = None
        self.legacy = False
        self.identified = False
        self.closing = False
        self.wakeup: anyio.Event | None = None  # set while the writer sleeps
        self.held_for: str | None = None  # RedialHeld: its connector waits while this peer is up

    def kick(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup.set()


class Messaging:
    """A peer: listeners, connectors, per-peer queues, one receive stream.

    Use it as an async context manager; it owns a task group that runs every
    connection.  Leaving the block closes every connection and listener and,
    with a storage, leaves undelivered persistent messages on disk (the
    storage is closed).

    Args:
        ident: this peer's identifier (at most 50 characters).
        storage: a ``QueuesStorage`` for persistent messages, or the path of
            an SQLite file (opened in a worker thread).
        keepalive_interval: seconds of silence before a connection is pinged
            (60; on by default so that a dead peer is noticed); ``None``
            disables keepalive.
        keepalive_wait: seconds to wait for the answer before closing.
        reconnect_interval: first delay of a connector's reconnect back-off.
        reconnect_max_interval: longest delay of the back-off (it doubles).
        connect_timeout: seconds a TCP connect (and TLS handshake) may take.
        handshake_timeout: seconds a new connection may take to identify.
        max_packet_size: the largest packet accepted from a peer.
        window: unacknowledged messages a peer may send us at once.
        max_buffered: received messages waiting for ``receive()`` above which
            sockets are no longer read.
        max_buffered_bytes: the same limit in payload bytes.
        max_queued: while a peer is connected and this many messages sent
            to it are not yet delivered, ``send_message`` to it waits until
            half of them are (so a fast sender is paced by its receiver).
            For a peer that is not connected messages queue without this
            limit (their TTL bounds them).  ``None``: never wait.
        legacy: speak exactly as snakeMQ 1.6 (no acknowledgements); for tests
            and interoperability checks.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
    """

    def __init__(
        self,
        ident: str,
        storage: QueuesStorage | str | os.PathLike[str] | None = None,
        *,
        keepalive_interval: float | None = DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_wait: float = DEFAULT_KEEPALIVE_WAIT,
        reconnect_interval: float = 1.0,
        reconnect_max_interval: float = 30.0,
        connect_timeout: float = 10.0,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        window: int = DEFAULT_WINDOW,
        max_buffered: int = 2 * DEFAULT_WINDOW,
        max_buffered_bytes: int = 32 * 1024 * 1024,
        max_queued: int | None = 2 * DEFAULT_WINDOW,
        legacy: bool = False,
    ) -> None:
        for name, value in (
            ("keepalive_wait", keepalive_wait),
            ("reconnect_interval", reconnect_interval),
            ("reconnect_max_interval", reconnect_max_interval),
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
        ):
            _check_seconds(name, value)
        if keepalive_interval is not None:
            _check_seconds("keepalive_interval", keepalive_interval)
        for name, count in (
            ("max_buffered", max_buffered),
            ("max_buffered_bytes", max_buffered_bytes),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an int >= 1, got {count!r}")
        if storage is not None and not isinstance(storage, str | os.PathLike | QueuesStorage):
            raise TypeError(
                f"storage must be a QueuesStorage or a path, not {type(storage).__name__}"
            )
        self._engine = Engine(
            ident,
            persistent=storage is not None,
            keepalive_interval=keepalive_interval,
            keepalive_wait=keepalive_wait,
            handshake_timeout=handshake_timeout,
            max_packet_size=max_packet_size,
            window=window,
            max_queued=max_queued,
            legacy=legacy,
        )
        self.ident = self._engine.ident
        self._storage_arg = storage
        self._storage: QueuesStorage | None = None
        self._persistent = storage is not None
        self._reconnect_interval = reconnect_interval
        self._reconnect_max_interval = max(reconnect_max_interval, reconnect_interval)
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._state = _NEW
        self._tg: anyio.abc.TaskGroup | None = None
        self._conn_seq = itertools.count(1)
        self._conns: dict[str, _Conn] = {}
        self._peers: dict[str, _Conn] = {}  # identified connections by remote ident
        self._connect_waiters: dict[str, anyio.Event] = {}
        self._away_waiters: dict[str, anyio.Event] = {}  # held connectors, by remote ident
        self._conns_changed: anyio.Event | None = None
        self._listeners: dict[tuple[str, int], tuple[anyio.CancelScope, anyio.Event]] = {}
        # undelivered receipts per peer, by uuid (their number paces senders)
        self._receipts: dict[str, dict[bytes, Receipt]] = {}
        self._subscribers: list[EventStream] = []
        self._sends = 0
        # send pacing: undelivered receipts per peer, and senders waiting
        self._queue_waiters: dict[str, anyio.Event] = {}
        self._legacy_conns = 0
        # receive buffer
        self._rx: deque[MessageReceived] = deque()
        self._rx_bytes = 0
        self._max_buffered = max_buffered
        self._max_buffered_bytes = max_buffered_bytes
        self._low_buffered = max_buffered // 2
        self._low_buffered_bytes = max_buffered_bytes // 2
        self._rx_event: anyio.Event | None = None
        self._space_event: anyio.Event | None = None
        # acknowledgements: messages taken by the application, per connection
        self._handed: dict[str, int] = {}
        self._ack_event: anyio.Event | None = None
        # timer and storage
        self._timer_event: anyio.Event | None = None
        self._flush_event: anyio.Event | None = None
        self._flush_requested = False
        self._taken = 0  # storage batches taken from the engine
        self._applied = 0  # ... and applied
        self._applied_event: anyio.Event | None = None
        self._failed_batches: dict[int, BaseException] = {}
        self._carry: StorageBatch | None = None  # a batch that failed, retried first

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self: _T) -> _T:
        if self._state != _NEW:
            raise RuntimeError("a Messaging can be entered only once")
        storage = self._storage_arg
        if isinstance(storage, str | os.PathLike):
            storage = await anyio.to_thread.run_sync(SqliteQueuesStorage, os.fspath(storage))
        self._storage = storage
        state = None
        if storage is not None:
            try:
                state = await anyio.to_thread.run_sync(storage.load)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(storage.close)
                raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = _RUNNING
        if state is not None:
            self._dispatch(self._engine.load(state.queues, state.seen, time.monotonic()))
        tg.start_soon(self._timer, name="snakemq timer")
        tg.start_soon(self._acker, name="snakemq acker")
        if storage is not None:
            tg.start_soon(self._flusher, storage, name="snakemq flusher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            await self._close_connections()
        tg.cancel_scope.cancel()
        try:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # the body's own error propagates as it is, not in an exception group
                await tg.__aexit__(None, None, None)
                return None
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def _close_connections(self) -> None:
        """Acknowledge what the application took, then close every connection
        after it wrote what it has (so a clean exit leaves no resends)."""
        self._state = _CLOSING
        self._hand_taken()
        engine = self._engine
        for conn_id in list(self._conns):
            self._dispatch(engine.close(conn_id))
        while self._conns:
            wakeup = self._conns_changed = anyio.Event()
            await wakeup.wait()

    async def _shutdown(self) -> None:
        self._state = _CLOSED
        self._hand_taken()
        storage = self._storage
        if storage is not None:
            batch = self._take_batch()
            self._taken += 1
            try:
                if batch is not None:
                    await anyio.to_thread.run_sync(storage.apply, batch)
            except Exception as exc:
                log.exception("could not store the last queue changes")
                self._failed_batches[self._taken] = exc
            finally:
                self._applied = self._taken  # sends waiting for this batch may return
                await anyio.to_thread.run_sync(storage.close)
        for receipt in [r for per_peer in self._receipts.values() for r in per_peer.values()]:
            receipt._resolve(
                MessagingClosedError(
                    f"messaging closed before the message to {receipt.ident!r} was delivered",
                    receipt.ident,
                    receipt.uuid,
                )
            )
        self._receipts.clear()
        self._rx.clear()
        self._wake(self._rx_event)
        self._rx_event = None
        for waiter in [
            *self._connect_waiters.values(),
            *self._queue_waiters.values(),
            *self._away_waiters.values(),
        ]:
            waiter.set()
        for stream in self._subscribers:
            stream._end()
        self._subscribers.clear()
        self._wake(self._applied_event)

    def _running(self) -> anyio.abc.TaskGroup:
        if self._state != _RUNNING or self._tg is None:
            state = "not started" if self._state == _NEW else "closed"
            raise RuntimeError(f"Messaging is {state}; use it inside `async with Messaging(...)`")
        return self._tg

    # ------------------------------------------------------- listen, connect

    async def add_listener(
        self, address: tuple[str, int], ssl_config: SSLConfig | None = None
    ) -> tuple[str, int]:
        """Listen on ``(host, port)``; return the bound ``(host, port)``.

        Port 0 picks a free port; host ``""`` listens on every interface, and
        a name (``"localhost"``) on each of its addresses (IPv4 and IPv6).

        Raises:
            OSError: the address cannot be bound.
            ValueError: ``ssl_config`` cannot make a server context.
        """
        tg = self._running()
        host, port = _check_address(address)
        if ssl_config is not None:
            ssl_config.server_context()  # configuration errors surface here
        bound: tuple[str, int] = await tg.start(self._listen, host, port, ssl_config)
        return bound

    async def remove_listener(self, address: tuple[str, int]) -> None:
        """Stop the listener ``add_listener`` returned ``address`` for; return
        once its socket is closed (connections it accepted carry on).

        Raises:
            KeyError: there is no such listener.
        """
        entry = self._listeners.pop(_check_address(address), None)
        if entry is None:
            raise KeyError(f"no listener on {address!r}")
        scope, closed = entry
        scope.cancel()
        await closed.wait()

    async def add_connector(
        self, address: tuple[str, int], ssl_config: SSLConfig | None = None
    ) -> anyio.CancelScope:
        """Connect to ``(host, port)`` and keep connected: after a failure or
        a disconnect it reconnects by itself, backing off from
        ``reconnect_interval`` to ``reconnect_max_interval``.

        Returns a cancel scope; ``.cancel()`` stops reconnecting and closes
        the connection.
        """
        tg = self._running()
        host, port = _check_address(address)
        if ssl_config is not None:
            ssl_config.client_context()
        scope: anyio.CancelScope = await tg.start(self._connect_loop, host, port, ssl_config)
        return scope

    async def _listen(
        self,
        host: str,
        port: int,
        ssl_config: SSLConfig | None,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]],
    ) -> None:
        multi = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
        bound = multi.extra(SocketAttribute.local_address)
        assert isinstance(bound, tuple)
        address = (str(bound[0]), int(bound[1]))
        closed = anyio.Event()
        with anyio.CancelScope() as scope:
            self._listeners[address] = (scope, closed)
            task_status.started(address)
            log.info("%s listening on %s:%s", self.ident, *address)
            try:
                async with multi, anyio.create_task_group() as tg:
                    for listener in multi.listeners:
                        assert isinstance(listener, SocketListener)
                        tg.start_soon(self._accept_loop, listener, ssl_config)
            finally:
                if self._listeners.get(address, (None,))[0] is scope:
                    del self._listeners[address]
                closed.set()

    async def _accept_loop(self, listener: SocketListener, ssl_config: SSLConfig | None) -> None:
        tg = self._running()
        delay = 0.05
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. out of file descriptors: back off, go on
                log.error("accept failed: %s; retrying in %.2f s", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            tg.start_soon(self._serve_stream, stream, ssl_config, True, None)

    async def _connect_loop(
        self,
        host: str,
        port: int,
        ssl_config: SSLConfig | None,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope],
    ) -> None:
        base = self._reconnect_interval
        delay = base
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                stream: ByteStream | None = None
                try:
                    with anyio.fail_after(self._connect_timeout):
                        stream = await anyio.connect_tcp(host, port)
                except (OSError, TimeoutError) as exc:
                    log.info("%s: connect to %s:%s failed: %s", self.ident, host, port, exc)
                conn = None
                if stream is not None:
                    conn = await self._serve_stream(stream, ssl_config, False, host)
                    if conn is not None and conn.identified:
                        delay = base
                if self._state != _RUNNING:
                    return
                if conn is not None and conn.held_for is not None:
                    # redundant: the peer is connected over another connection
                    log.info(
                        "%s: not redialling %s:%s while %r is connected",
                        self.ident,
                        host,
                        port,
                        conn.held_for,
                    )
                    await self._until_away(conn.held_for)
                    if self._state != _RUNNING:
                        return
                    delay = base
                    continue  # at once
                await anyio.sleep(delay * random.uniform(0.75, 1.0))
                delay = min(delay * 2, self._reconnect_max_interval)

    async def _serve_stream(
        self,
        stream: ByteStream,
        ssl_config: SSLConfig | None,
        server_side: bool,
        hostname: str | None,
    ) -> _Conn | None:
        """Run one accepted or connected stream to its end; return its
        connection (``None`` if it never got that far)."""
        conn_id = f"c{next(self._conn_seq)}"
        try:
            names: frozenset[str] | None = None
            if ssl_config is not None:
                context = (
                    ssl_config.server_context() if server_side else ssl_config.client_context()
                )
                try:
                    with anyio.fail_after(self._handshake_timeout):
                        stream = await TLSStream.wrap(
                            stream,
                            server_side=server_side,
                            hostname=hostname,
                            ssl_context=context,
                            standard_compatible=False,
                        )
                except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                    await _close(stream)
                    error = TLSHandshakeError(f"TLS handshake failed: {exc or type(exc).__name__}")
                    log.warning("conn=%s %s", conn_id, error)
                    self._publish(ErrorOccurred(conn_id, None, error))
                    return None
                if ssl_config.bind_ident:
                    names = cert_idents(stream.extra(TLSAttribute.peer_certificate, None))
            return await self._run_connection(conn_id, stream, names, not server_side)
        except Exception:
            log.exception("conn=%s failed unexpectedly; it is closed", conn_id)
            await _close(stream)
            return None

    async def _run_connection(
        self, conn_id: str, stream: ByteStream, names: frozenset[str] | None, outbound: bool
    ) -> _Conn | None:
        if self._state != _RUNNING:
            await _close(stream)
            return None
        engine = self._engine
        conn = _Conn(conn_id, stream)
        self._conns[conn_id] = conn
        engine.connection_made(conn_id, time.monotonic(), cert_idents=names, outbound=outbound)
        self._wake_timer()
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader, conn)
                    tg.start_soon(self._writer, conn)
        finally:
            await _close(stream)
            del self._conns[conn_id]
            if self._conns_changed is not None:
                self._conns_changed.set()
                self._conns_changed = None
            self._dispatch(engine.connection_lost(conn_id, time.monotonic()))
            self._wake_timer()
            self._request_flush()
        return conn

    # -------------------------------------------------------- per connection

    async def _reader(self, conn: _Conn) -> None:
        engine = self._engine
        stream = conn.stream
        conn_id = conn.conn_id
        rx = self._rx
        persistent = self._persistent
        keepalive = self._engine.keepalive_interval is not None
        monotonic = time.monotonic
        try:
            while True:
                data = await stream.receive(RECEIVE_SIZE)
                events = engine.receive_data(conn_id, data, monotonic())
                if events:
                    self._dispatch(events)
                conn.kick()
                if keepalive:
                    # an answered ping brings the next ping deadline forward
                    self._wake_timer()
                if persistent:
                    self._request_flush()
                if conn.closing:
                    return
                if len(rx) >= self._max_buffered or self._rx_bytes >= self._max_buffered_bytes:
                    await self._pause(conn)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        conn.scope.cancel()

    async def _pause(self, conn: _Conn) -> None:
        self._publish(ReadingPaused(conn.conn_id, conn.ident))
        while len(self._rx) > self._low_buffered or self._rx_bytes > self._low_buffered_bytes:
            if self._space_event is None:
                self._space_event = anyio.Event()
            await self._space_event.wait()
        self._publish(ReadingResumed(conn.conn_id, conn.ident))

    async def _writer(self, conn: _Conn) -> None:
        engine = self._engine
        stream = conn.stream
        conn_id = conn.conn_id
        persistent = self._persistent
        try:
            while True:
                data = engine.data_to_send(conn_id)
                if data:
                    await stream.send(data)
                    events = engine.data_sent(conn_id, len(data))
                    if events:
                        self._dispatch(events)
                        if persistent:
                            self._request_flush()
                    continue
                if conn.closing:
                    break
                wakeup = conn.wakeup = anyio.Event()
                await wakeup.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        conn.scope.cancel()

    # ------------------------------------------------------------ background

    async def _timer(self) -> None:
        engine = self._engine
        monotonic = time.monotonic
        while True:
            wakeup = self._timer_event = anyio.Event()
            deadline = engine.next_deadline()
            if deadline is None:
                await wakeup.wait()
                continue
            delay = deadline - monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await wakeup.wait()
                continue
            self._timer_event = None
            events = engine.handle_timeout(monotonic())
            if events:
                self._dispatch(events)
            for conn in self._conns.values():
                conn.kick()
            self._request_flush()
            await anyio.lowlevel.checkpoint()

    def _wake_timer(self) -> None:
        wakeup = self._timer_event
        if wakeup is not None:
            self._timer_event = None
            wakeup.set()

    async def _acker(self) -> None:
        while True:
            wakeup = self._ack_event = anyio.Event()
            await wakeup.wait()
            self._hand_taken()

    def _hand_taken(self) -> None:
        handed = self._handed
        if not handed:
            return
        engine = self._engine
        conns = self._conns
        for conn_id, count in handed.items():
            engine.handed(conn_id, count)
            conn = conns.get(conn_id)
            if conn is not None:
                conn.kick()
        handed.clear()
        self._request_flush()

    def _request_flush(self) -> None:
        if self._persistent and not self._flush_requested:
            self._flush_requested = True
            wakeup = self._flush_event
            if wakeup is not None:
                self._flush_event = None
                wakeup.set()

    async def _flusher(self, storage: QueuesStorage) -> None:
        while True:
            if not self._flush_requested:
                wakeup = self._flush_event = anyio.Event()
                await wakeup.wait()
            self._flush_requested = False
            with anyio.CancelScope(shield=True):
                # taken and applied as one step: a batch is never lost to a cancel
                batch = self._take_batch()
                self._taken += 1
                number = self._taken
                if batch is not None:
                    try:
                        await anyio.to_thread.run_sync(storage.apply, batch)
                    except Exception as exc:
                        log.exception("storing queue changes failed; retrying with the next batch")
                        self._failed_batches[number] = exc
                        self._carry = batch
            self._applied = number
            self._wake(self._applied_event)
            self._applied_event = None

    def _take_batch(self) -> StorageBatch | None:
        batch = self._engine.take_storage_batch()
        carry = self._carry
        if carry is None:
            return batch
        self._carry = None
        if batch is not None:
            carry.extend(batch)
        return carry

    async def _wait_stored(self) -> None:
        number = self._taken + 1  # the batch that holds what was just queued
        self._request_flush()
        while self._applied < number:
            if self._state == _CLOSED:
                raise RuntimeError("Messaging closed while a message was being stored")
            if self._applied_event is None:
                self._applied_event = anyio.Event()
            await self._applied_event.wait()
        error = self._failed_batches.pop(number, None)
        if error is not None:
            raise StorageError(f"the message could not be stored: {error}") from error

    # ---------------------------------------------------------------- events

    def _dispatch(self, events: list[Event]) -> None:
        # hot path: classes compared by identity; the narrowing mypy cannot
        # see is spelled out with ignores
        rx = self._rx
        received = False
        receipts = self._receipts
        for event in events:
            cls = type(event)
            if cls is MessageReceived:
                rx.append(event)  # type: ignore[arg-type]
                self._rx_bytes += len(event.message.data)  # type: ignore[union-attr]
                received = True
                continue
            if cls is MessageSent:
                if self._legacy_conns:  # a 1.6 peer: written is as good as it gets
                    assert isinstance(event, MessageSent)
                    conn = self._conns.get(event.conn_id)
                    if conn is not None and conn.legacy:
                        self._resolve(event.ident, event.uuid, None)
            elif cls is MessageDelivered:
                per_peer = receipts.get(event.ident)  # type: ignore[union-attr, arg-type]
                if per_peer is not None:
                    receipt = per_peer.pop(event.uuid, None)  # type: ignore[union-attr]
                    if receipt is not None:
                        receipt._resolve(None)
                        if self._queue_waiters and self._engine.queue_has_room(receipt.ident):
                            self._release_senders(receipt.ident)
            elif cls is MessageDropped:
                assert isinstance(event, MessageDropped)
                self._resolve(
                    event.ident,
                    event.uuid,
                    MessageDroppedError(
                        f"the TTL of the message to {event.ident!r} ran out before it was "
                        "delivered",
                        event.ident,
                        event.uuid,
                    ),
                )
            elif cls is CloseConnection:
                self._close_conn(event.conn_id)  # type: ignore[union-attr]
                continue
            elif cls is RedialHeld:
                assert isinstance(event, RedialHeld)
                conn = self._conns.get(event.conn_id)
                if conn is not None:
                    conn.held_for = event.ident  # its connect loop reads it
                continue
            elif cls is PeerConnected:
                assert isinstance(event, PeerConnected)
                self._on_connected(event)
            elif cls is PeerDisconnected:
                assert isinstance(event, PeerDisconnected)
                self._on_disconnected(event)
            if self._subscribers:
                self._publish(event)  # type: ignore[arg-type]
        if received:
            wakeup = self._rx_event
            if wakeup is not None:
                self._rx_event = None
                wakeup.set()

    def _resolve(self, ident: str, uuid: bytes, error: DeliveryError | None) -> None:
        per_peer = self._receipts.get(ident)
        if per_peer is None:
            return
        receipt = per_peer.pop(uuid, None)
        if receipt is None:
            return
        receipt._resolve(error)
        if self._queue_waiters and self._engine.queue_has_room(ident):
            self._release_senders(ident)

    def _release_senders(self, ident: str) -> None:
        waiter = self._queue_waiters.pop(ident, None)
        if waiter is not None:
            waiter.set()

    def _on_disconnected(self, event: PeerDisconnected) -> None:
        conn = self._peers.get(event.ident)
        if conn is not None and conn.conn_id == event.conn_id:
            del self._peers[event.ident]
            if conn.legacy:
                self._legacy_conns -= 1
            self._wake(self._away_waiters.pop(event.ident, None))  # held connectors redial
        waiter = self._queue_waiters.pop(event.ident, None)
        if waiter is not None:
            waiter.set()  # a peer that is away does not pace its senders
        self._wake_timer()

    def _on_connected(self, event: PeerConnected) -> None:
        conn = self._conns.get(event.conn_id)
        if conn is not None:
            conn.ident = event.ident
            conn.legacy = event.legacy
            conn.identified = True
            self._peers[event.ident] = conn
            if event.legacy:
                self._legacy_conns += 1
            conn.kick()
        waiter = self._connect_waiters.pop(event.ident, None)
        if waiter is not None:
            waiter.set()
        self._wake_timer()

    async def _until_away(self, ident: str) -> None:
        """Return once ``ident`` has no identified connection (or on close)."""
        while ident in self._peers and self._state == _RUNNING:
            waiter = self._away_waiters.get(ident)
            if waiter is None:
                waiter = self._away_waiters[ident] = anyio.Event()
            await waiter.wait()

    def _close_conn(self, conn_id: str) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.closing:
            return
        conn.closing = True
        conn.scope.deadline = min(conn.scope.deadline, anyio.current_time() + CLOSE_FLUSH_TIMEOUT)
        conn.kick()

    def _publish(self, event: MessagingEvent) -> None:
        for stream in self._subscribers:
            stream._push(event)

    @staticmethod
    def _wake(event: anyio.Event | None) -> None:
        if event is not None:
            event.set()

    # ----------------------------------------------------------- application

    async def send_message(self, ident: str, message: Message) -> Receipt:
        """Queue ``message`` for the peer ``ident`` and return its receipt.

        Returns once the message is queued and, when it is persistent
        (``FLAG_PERSISTENT``) and this ``Messaging`` has a storage, durably
        stored.  While ``max_queued`` messages to the connected peer are
        undelivered it first waits for the peer to catch up.  Safe to call from many tasks at once.  If the call is
        cancelled while waiting for the storage, the message stays queued
        (it is stored and delivered all the same).

        Raises:
            TypeError, ValueError: ``ident`` or ``message`` is invalid.
            StorageError: the storage failed to store the message.
            RuntimeError: the ``Messaging`` is not running.
        """
        if self._state != _RUNNING:
            self._running()
        sends = self._sends = self._sends + 1
        if not sends & 63:
            # let the connections run now and then in a tight send loop
            await anyio.lowlevel.checkpoint()
        if self._engine.queue_full(ident):
            await self._wait_queue_space(ident)
        conn = self._peers.get(ident)
        per_peer = self._receipts.get(ident)
        if per_peer is None:
            per_peer = self._receipts[ident] = {}
        events = self._engine.send_message(ident, message, _monotonic())
        uuid = message.uuid
        receipt = per_peer[uuid] = Receipt(ident, uuid)
        if events:
            self._dispatch(events)
        if conn is not None:
            wakeup = conn.wakeup
            if wakeup is not None:
                conn.wakeup = None
                wakeup.set()
        else:
            self._wake_timer()
        if self._persistent and message.flags & FLAG_PERSISTENT:
            await self._wait_stored()
        return receipt

    async def _wait_queue_space(self, ident: str) -> None:
        while not self._engine.queue_has_room(ident):
            waiter = self._queue_waiters.get(ident)
            if waiter is None:
                waiter = self._queue_waiters[ident] = anyio.Event()
            await waiter.wait()
            if self._state != _RUNNING:
                self._running()

    async def receive(self) -> tuple[str, Message]:
        """Wait for the next received message; return ``(sender ident, message)``.

        Taking the message is what acknowledges it to a capable sender.
        Cancelling a waiting ``receive()`` loses nothing.

        Raises:
            anyio.ClosedResourceError: the ``Messaging`` is closed.
        """
        rx = self._rx
        while not rx:
            if self._state != _RUNNING:
                self._raise_closed()
            wakeup = self._rx_event
            if wakeup is None:
                wakeup = self._rx_event = anyio.Event()
            await wakeup.wait()
        if self._state != _RUNNING:
            self._raise_closed()
        event = rx.popleft()
        self._took(event)
        return event.ident, event.message

    def receive_nowait(self) -> tuple[str, Message]:
        """The next received message if one is buffered.

        Raises:
            anyio.WouldBlock: none is buffered.
            anyio.ClosedResourceError: the ``Messaging`` is closed.
        """
        if self._state != _RUNNING:
            self._raise_closed()
        if not self._rx:
            raise anyio.WouldBlock
        event = self._rx.popleft()
        self._took(event)
        return event.ident, event.message

    async def receive_batch(self, max_messages: int = 1024) -> list[tuple[str, Message]]:
        """Wait for at least one message; return up to ``max_messages`` of
        those buffered (the fast way to drain a busy stream)."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
        rx = self._rx
        if not rx or self._state != _RUNNING:
            first = await self.receive()
            if not rx or max_messages == 1:
                return [first]
            batch = [first]
            max_messages -= 1
        else:
            batch = []
        # no await from here on: what leaves the buffer reaches the caller
        handed = self._handed
        popleft = rx.popleft
        nbytes = 0
        for _ in range(min(max_messages, len(rx))):
            event = popleft()
            nbytes += len(event.message.data)
            conn_id = event.conn_id
            handed[conn_id] = handed.get(conn_id, 0) + 1
            batch.append((event.ident, event.message))
        self._rx_bytes -= nbytes
        self._after_take()
        return batch

    def _took(self, event: MessageReceived) -> None:
        self._rx_bytes -= len(event.message.data)
        handed = self._handed
        conn_id = event.conn_id
        handed[conn_id] = handed.get(conn_id, 0) + 1
        self._after_take()

    def _after_take(self) -> None:
        wakeup = self._ack_event
        if wakeup is not None:
            self._ack_event = None
            wakeup.set()
        wakeup = self._space_event
        if (
            wakeup is not None
            and len(self._rx) <= self._low_buffered
            and self._rx_bytes <= self._low_buffered_bytes
        ):
            self._space_event = None
            wakeup.set()

    def _raise_closed(self) -> None:
        raise anyio.ClosedResourceError(
            "Messaging is not started" if self._state == _NEW else "Messaging is closed"
        )

    def __aiter__(self) -> Messaging:
        return self

    async def __anext__(self) -> tuple[str, Message]:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    @property
    def buffered(self) -> int:
        """Received messages waiting for ``receive()``."""
        return len(self._rx)

    async def wait_connected(self, ident: str, timeout: float | None = None) -> None:
        """Wait until the peer ``ident`` is connected and identified.

        Raises:
            TimeoutError: not connected within ``timeout`` seconds.
            anyio.ClosedResourceError: the ``Messaging`` closed.
        """
        self._running()
        with anyio.fail_after(timeout):
            while ident not in self._peers:
                waiter = self._connect_waiters.get(ident)
                if waiter is None:
                    waiter = self._connect_waiters[ident] = anyio.Event()
                await waiter.wait()
                if self._state != _RUNNING:
                    self._raise_closed()

    def is_connected(self, ident: str) -> bool:
        """Whether the peer ``ident`` is connected and identified now."""
        return ident in self._peers

    @property
    def connected(self) -> list[str]:
        """Identifiers of the peers connected now."""
        return list(self._peers)

    def queued(self, ident: str) -> list[Message]:
        """Messages waiting for ``ident`` (in flight included), oldest first."""
        return self._engine.queued(ident)

    def disconnect(self, ident: str) -> None:
        """Close the connection to ``ident`` (a connector will reconnect)."""
        conn = self._peers.get(ident)
        if conn is not None:
            self._dispatch(self._engine.close(conn.conn_id))

    def events(self, max_buffered: int = 10000) -> EventStream:
        """Subscribe to events: connected, disconnected, sent, delivered,
        dropped, error, reading paused/resumed.

        Use ``with messaging.events() as events: async for event in events:``;
        the subscription starts when this is called.
        """
        self._running()
        stream = EventStream(max_buffered, self._subscribers.remove)
        self._subscribers.append(stream)
        return stream

    def __repr__(self) -> str:
        state = ("new", "running", "closing", "closed")[self._state]
        return f"<Messaging {self.ident!r} {state} peers={sorted(self._peers)}>"


async def _close(stream: ByteStream) -> None:
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLOSE_FLUSH_TIMEOUT),
        contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError),
    ):
        await stream.aclose()


def _check_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def _check_address(address: Sequence[Any]) -> tuple[str, int]:
    if (
        not isinstance(address, tuple | list)
        or len(address) != 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
    ):
        raise TypeError(f"address must be a (host: str, port: int) tuple, got {address!r}")
    if not 0 <= address[1] <= 65535:
        raise ValueError(f"port must be in 0..65535, got {address[1]}")
    return address[0], address[1]
