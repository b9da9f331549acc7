"""``Messaging``: one local peer on anyio (asyncio or trio).

Theory of operation
-------------------

Every protocol rule lives in ``snakemq_proto``; this package only moves bytes
between sockets and the engine, runs its timer and applies its storage
batches.  All engine calls are synchronous and happen on the one event loop,
so no lock is needed.

``Messaging`` is a facade: it owns the engine, routes the engine's events
(``_dispatch``) and keeps the application's side (receipts, send pacing,
``receive()``).  The work is done by objects that own their state:

* ``Dialer`` (``_dialing.py``): per listener an accept loop, per connector a
  connect/reconnect loop, the TLS handshake of every new stream;
* ``Connections`` (``_connection.py``): per connection a *reader* and a
  *writer* task, and the close rules;
* ``StorageFlusher`` (``_flusher.py``): one task that applies the engine's
  storage batches in a worker thread, in order, grouped (group commit);
* ``Inbox`` (``_inbox.py``): received messages waiting for ``receive()``,
  and the backpressure on readers while it is full.

Two more tasks run here: the *timer*, which sleeps until
``engine.next_deadline()`` (or until woken because a deadline may have moved)
and calls ``engine.handle_timeout``, and the *acker*, which calls
``engine.handed()`` for the messages the application took since it last ran
(acknowledgements are batched).  Tasks sleep on ``Wakeup``s (``_wakeup.py``).

Time given to the engine is ``time.monotonic()`` throughout; the timer turns
deadlines into relative sleeps.
"""

from __future__ import annotations

import enum
import logging
import os
import time
import weakref
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from snakemq_proto import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WAIT,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_MAX_UNIDENTIFIED,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_MAX_INTERVAL,
    DEFAULT_WINDOW,
    DEFAULT_WRITE_STALL_TIMEOUT,
    FLAG_PERSISTENT,
    CloseConnection,
    Engine,
    ErrorOccurred,
    Event,
    FillRequest,
    LegacyQueuesStorage,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageReceived,
    MessageSent,
    PeerConnected,
    PeerDisconnected,
    PersistentWithoutStorage,
    QueuesStorage,
    RedialHeld,
    SSLConfig,
    check_address,
    check_seconds,
    load_state,
)

from ._connection import CLOSE_FLUSH_TIMEOUT, RECEIVE_SIZE, Connection, Connections
from ._dialing import Dialer, TLSHandshakeError
from ._flusher import StorageFlusher
from ._inbox import Inbox
from ._receipt import DeliveryError, MessageDroppedError, MessagingClosedError, Receipt
from ._standby import LeaseKeeper, open_for
from ._stream import EventStream, MessagingEvent
from ._wakeup import Wakeup

__all__ = ["CLOSE_FLUSH_TIMEOUT", "RECEIVE_SIZE", "Lifecycle", "Messaging", "TLSHandshakeError"]

log = logging.getLogger("snakemq.anyio")
_monotonic = time.monotonic

_T = TypeVar("_T", bound="Messaging")


class Lifecycle(enum.Enum):
    """Where a ``Messaging`` is in its life; it only moves forward."""

    NEW = "new"  # made, not entered
    RUNNING = "running"  # inside ``async with``
    CLOSING = "closing"  # leaving: connections write what they have and close
    CLOSED = "closed"  # left; the storage is closed


_RUNNING = Lifecycle.RUNNING


class Messaging:
    """A peer: listeners, connectors, per-peer queues, one receive stream.

    Use it as an async context manager; it owns a task group that runs every
    connection.  Leaving the block closes every connection and listener and,
    with a storage, leaves undelivered persistent messages on disk (the
    storage is closed).

    Args:
        ident: this peer's identifier (at most 50 characters).
        storage: a ``QueuesStorage`` for persistent messages (a snakeMQ 1.6
            style storage is adapted), or the path of an SQLite file or a
            database URL (opened in a worker thread).  With a storage shared
            by processes (PostgreSQL) entering waits, as a standby, while
            another process serves ``ident``.
        keepalive_interval: seconds of silence before a connection is pinged
            (60; on by default so that a dead peer is noticed); ``None``
            disables keepalive.
        keepalive_wait: seconds to wait for the answer before closing.
        reconnect_interval: first delay of a connector's reconnect back-off.
        reconnect_max_interval: longest delay of the back-off (it doubles).
        connect_timeout: seconds a TCP connect may take.
        handshake_timeout: seconds a new connection may take to identify
            (and a TLS handshake may take).
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
        write_stall_timeout: seconds one write to a peer (one buffer of at
            most 512 KiB plus one message) may wait for the peer to take it;
            past that the peer is not reading and the connection is closed
            (``ErrorOccurred`` with ``SlowReaderError``).  ``None`` never closes.
        max_unidentified: accepted connections that may await identification
            at once (512); a new one beyond that closes the oldest, with one
            warning per streak (logger ``snakemq.engine``).

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
    """

    def __init__(
        self,
        ident: str,
        storage: QueuesStorage | LegacyQueuesStorage | str | os.PathLike[str] | None = None,
        *,
        keepalive_interval: float | None = DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_wait: float = DEFAULT_KEEPALIVE_WAIT,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        reconnect_max_interval: float = DEFAULT_RECONNECT_MAX_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        window: int = DEFAULT_WINDOW,
        max_buffered: int = 2 * DEFAULT_WINDOW,
        max_buffered_bytes: int = 32 * 1024 * 1024,
        max_queued: int | None = 2 * DEFAULT_WINDOW,
        legacy: bool = False,
        write_stall_timeout: float | None = DEFAULT_WRITE_STALL_TIMEOUT,
        max_unidentified: int = DEFAULT_MAX_UNIDENTIFIED,
    ) -> None:
        for name, value in (
            ("keepalive_wait", keepalive_wait),
            ("reconnect_interval", reconnect_interval),
            ("reconnect_max_interval", reconnect_max_interval),
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
        ):
            check_seconds(value, name)
        if keepalive_interval is not None:
            check_seconds(keepalive_interval, "keepalive_interval")
        for name, count in (
            ("max_buffered", max_buffered),
            ("max_buffered_bytes", max_buffered_bytes),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be an int >= 1, got {count!r}")
        if (
            storage is not None
            and not isinstance(storage, str | os.PathLike | QueuesStorage)
            and not callable(getattr(storage, "get_queues", None))  # 1.6's interface: adapted
        ):
            raise TypeError(
                f"storage must be a QueuesStorage or a path, not {type(storage).__name__}"
            )
        engine = self._engine = Engine(
            ident,
            persistent=storage is not None,
            keepalive_interval=keepalive_interval,
            keepalive_wait=keepalive_wait,
            handshake_timeout=handshake_timeout,
            max_packet_size=max_packet_size,
            window=window,
            max_queued=max_queued,
            legacy=legacy,
            write_stall_timeout=write_stall_timeout,
            max_unidentified=max_unidentified,
        )
        self.ident = engine.ident
        self._storage_arg = storage
        self._persistent = storage is not None
        self._state = Lifecycle.NEW
        self._persistent_check = PersistentWithoutStorage(ident, self._persistent, log)
        self._tg: anyio.abc.TaskGroup | None = None
        self._flusher: StorageFlusher | None = None  # made when entered
        self._keeper: LeaseKeeper | None = None  # a holder's lease checks
        self._inbox = Inbox(max_buffered, max_buffered_bytes)
        self._conns = Connections(
            engine,
            self._inbox,
            dispatch=self._dispatch,
            publish=self._publish,
            wake_timer=self._wake_timer,
            request_flush=self._request_flush if self._persistent else None,
            is_running=self._is_running,
        )
        self._dialer = Dialer(
            self.ident,
            self._conns,
            publish=self._publish,
            is_running=self._is_running,
            reconnect_interval=reconnect_interval,
            reconnect_max_interval=reconnect_max_interval,
            connect_timeout=connect_timeout,
            handshake_timeout=handshake_timeout,
        )
        self._peers: dict[str, Connection] = {}  # identified connections by remote ident
        self._connected = Wakeup()  # a peer identified (wait_connected)
        # undelivered receipts per peer, by uuid, while the caller holds them:
        # a producer that drops its receipts keeps nothing per message (a
        # queue past the window keeps its messages on disk only)
        self._receipts: dict[str, weakref.WeakValueDictionary[bytes, Receipt]] = {}
        self._subscribers: list[EventStream] = []
        self._sends = 0
        # send pacing: senders waiting for room in a peer's queue
        self._queue_waiters: dict[str, anyio.Event] = {}
        self._timer_wakeup = Wakeup()

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self: _T) -> _T:
        if self._state is not Lifecycle.NEW:
            raise RuntimeError("a Messaging can be entered only once")
        storage = self._storage_arg
        if storage is not None:  # a standby waits here until it serves its ident
            storage = await open_for(self.ident, storage)
        state = None
        if storage is not None:
            try:
                # a window of each queue, if the storage can (see _filled)
                state = await anyio.to_thread.run_sync(load_state, storage)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(storage.close)
                raise
            self._flusher = StorageFlusher(
                storage, self._engine.take_storage_batch, self._engine.fill_requests, self._filled
            )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = Lifecycle.RUNNING
        if state is not None:
            self._dispatch(self._engine.restore(state, time.monotonic()))
            self._request_flush()  # the flusher also serves the first reads of the queues
        tg.start_soon(self._timer, name="snakemq timer")
        tg.start_soon(self._acker, name="snakemq acker")
        if self._flusher is not None:
            tg.start_soon(self._flusher.run, name="snakemq flusher")
        self._keeper = LeaseKeeper.of(self.ident, storage)
        if self._keeper is not None:  # steps down (cancels tg) when the lease is lost
            tg.start_soon(self._keeper.run, tg.cancel_scope, name="snakemq lease")
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
            suppressed = await tg.__aexit__(exc_type, exc, tb)
            if self._keeper is not None:
                self._keeper.raise_if_lost()
            return suppressed
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def _close_connections(self) -> None:
        """Acknowledge what the application took, then close every connection
        after it wrote what it has (so a clean exit leaves no resends)."""
        self._state = Lifecycle.CLOSING
        self._hand_taken()
        engine = self._engine
        for conn_id in list(self._conns.by_id):
            self._dispatch(engine.close(conn_id))
        await self._conns.wait_all_closed()

    async def _shutdown(self) -> None:
        self._state = Lifecycle.CLOSED
        self._hand_taken()
        if self._flusher is not None:
            await self._flusher.close()
        for receipt in [r for per_peer in self._receipts.values() for r in per_peer.values()]:
            receipt._resolve(
                MessagingClosedError(
                    f"messaging closed before the message to {receipt.ident!r} was delivered",
                    receipt.ident,
                    receipt.uuid,
                )
            )
        self._receipts.clear()
        self._inbox.clear()
        self._connected.set()
        for waiter in self._queue_waiters.values():
            waiter.set()
        self._dialer.release_all()
        for stream in self._subscribers:
            stream._end()
        self._subscribers.clear()

    def _is_running(self) -> bool:
        return self._state is _RUNNING

    def _running(self) -> anyio.abc.TaskGroup:
        if self._state is not _RUNNING or self._tg is None:
            state = "not started" if self._state is Lifecycle.NEW else "closed"
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
        host, port = check_address(address)
        if ssl_config is not None:
            ssl_config.server_context()  # configuration errors surface here
        return await self._dialer.add_listener(tg, host, port, ssl_config)

    async def remove_listener(self, address: tuple[str, int]) -> None:
        """Stop the listener ``add_listener`` returned ``address`` for; return
        once its socket is closed (connections it accepted carry on).

        Raises:
            KeyError: there is no such listener.
        """
        await self._dialer.remove_listener(check_address(address))

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
        host, port = check_address(address)
        if ssl_config is not None:
            ssl_config.client_context()
        return await self._dialer.add_connector(tg, host, port, ssl_config)

    # ------------------------------------------------------------ background

    async def _timer(self) -> None:
        engine = self._engine
        wakeup = self._timer_wakeup
        monotonic = time.monotonic
        while True:
            deadline = engine.next_deadline()
            if deadline is None:
                await wakeup.wait()
                continue
            delay = deadline - monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await wakeup.wait()
                continue
            events = engine.handle_timeout(monotonic())
            if events:
                self._dispatch(events)
            self._conns.kick_all()
            self._request_flush()
            await anyio.lowlevel.checkpoint()

    def _wake_timer(self) -> None:
        self._timer_wakeup.set()

    async def _acker(self) -> None:
        taken = self._inbox.taken
        while True:
            await taken.wait()
            self._hand_taken()

    def _hand_taken(self) -> None:
        handed = self._inbox.take_handed()
        if not handed:
            return
        engine = self._engine
        conns = self._conns
        for conn_id, count in handed.items():
            engine.handed(conn_id, count)
            conn = conns.get(conn_id)
            if conn is not None:
                conn.kick()
        self._request_flush()

    def _filled(self, request: FillRequest, rows: list[tuple[int, Message]] | None) -> None:
        """The flusher read the next rows of a restored queue (``None``: it
        could not; asked for again at the next flush)."""
        engine = self._engine
        if rows is None:
            engine.fill_failed(request)
            return
        self._dispatch(engine.filled(request, rows, time.monotonic()))
        self._conns.kick_all()
        self._wake_timer()
        self._request_flush()

    def _request_flush(self) -> None:
        flusher = self._flusher
        if flusher is not None:
            flusher.request()

    # ---------------------------------------------------------------- events

    def _dispatch(self, events: list[Event]) -> None:
        # hot path: classes compared by identity; the narrowing mypy cannot
        # see is spelled out with ignores
        inbox = self._inbox
        received = False
        failed: str | None = None  # the connection of the last ErrorOccurred
        receipts = self._receipts
        for event in events:
            cls = type(event)
            if cls is MessageReceived:
                inbox.push(event)  # type: ignore[arg-type]
                received = True
                continue
            if cls is MessageSent:
                if event.settled:  # type: ignore[union-attr]  # a 1.6 peer: written settles it
                    self._resolve(event.ident, event.uuid, None)  # type: ignore[union-attr, arg-type]
            elif cls is MessageDelivered:
                per_peer = receipts.get(event.ident)  # type: ignore[union-attr, arg-type]
                if per_peer is not None:
                    receipt = per_peer.pop(event.uuid, None)  # type: ignore[union-attr]
                    if receipt is not None:
                        receipt._resolve(None)
                if self._queue_waiters and self._engine.queue_has_room(event.ident):  # type: ignore[union-attr, arg-type]
                    self._release_senders(event.ident)  # type: ignore[union-attr, arg-type]
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
                conn_id = event.conn_id  # type: ignore[union-attr]
                self._conns.close(conn_id, error=conn_id == failed)
                continue
            elif cls is ErrorOccurred:
                failed = event.conn_id  # type: ignore[union-attr]
            elif cls is RedialHeld:
                assert isinstance(event, RedialHeld)
                self._dialer.hold(event.conn_id, event.ident)
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
            inbox.arrived.set()

    def _resolve(self, ident: str, uuid: bytes, error: DeliveryError | None) -> None:
        per_peer = self._receipts.get(ident)
        receipt = None if per_peer is None else per_peer.pop(uuid, None)
        if receipt is not None:
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
        self._dialer.release(event.ident)  # held connectors redial
        self._release_senders(event.ident)  # a peer that is away does not pace its senders
        self._wake_timer()

    def _on_connected(self, event: PeerConnected) -> None:
        conn = self._conns.get(event.conn_id)
        if conn is not None:
            conn.ident = event.ident
            conn.identified = True
            self._peers[event.ident] = conn
            conn.kick()
        self._connected.set()
        self._wake_timer()

    def _publish(self, event: MessagingEvent) -> None:
        for stream in self._subscribers:
            stream._push(event)

    # ----------------------------------------------------------- application

    async def send_message(self, ident: str, message: Message) -> Receipt:
        """Queue ``message`` for the peer ``ident`` and return its receipt.

        Returns once the message is queued and, when it is persistent
        (``FLAG_PERSISTENT``) and this ``Messaging`` has a storage, durably
        stored.  While ``max_queued`` messages to the connected peer are
        undelivered it first waits for the peer to catch up.  Safe to call
        from many tasks at once.  If the call is cancelled while waiting for
        the storage, the message stays queued (it is stored and delivered
        all the same).

        Raises:
            TypeError, ValueError: ``ident`` or ``message`` is invalid.
            StorageError: the storage failed to store the message.
            RuntimeError: the ``Messaging`` is not running.
        """
        if self._state is not _RUNNING:
            self._running()
        sends = self._sends = self._sends + 1
        if not sends & 4095:
            # let the connections run now and then in a tight send loop; rarely
            # (a few ms of sends), so that each writer takes several messages
            # per wake-up even when sends are spread over hundreds of peers:
            # every 64 sends, hub CPU/message at 400 peers was 6x that at 10;
            # every 4096 it is < 2x (bench/scale.py)
            await anyio.lowlevel.checkpoint()
        if self._engine.queue_full(ident):
            await self._wait_queue_space(ident)
        conn = self._peers.get(ident)
        per_peer = self._receipts.get(ident)
        if per_peer is None:
            per_peer = self._receipts[ident] = weakref.WeakValueDictionary()
        events = self._engine.send_message(ident, message, _monotonic())
        self._persistent_check.check(ident, message)
        uuid = message.uuid
        receipt = per_peer[uuid] = Receipt(ident, uuid)
        if events:
            self._dispatch(events)
        if conn is not None:
            conn.wakeup.set()
        else:
            self._wake_timer()
        flusher = self._flusher
        if flusher is not None and message.flags & FLAG_PERSISTENT:
            await flusher.wait_stored()
        return receipt

    async def _wait_queue_space(self, ident: str) -> None:
        while not self._engine.queue_has_room(ident):
            waiter = self._queue_waiters.get(ident)
            if waiter is None:
                waiter = self._queue_waiters[ident] = anyio.Event()
            await waiter.wait()
            if self._state is not _RUNNING:
                self._running()

    async def receive(self) -> tuple[str, Message]:
        """Wait for the next received message; return ``(sender ident, message)``.

        Taking the message is what acknowledges it to a capable sender.
        Cancelling a waiting ``receive()`` loses nothing.

        Raises:
            anyio.ClosedResourceError: the ``Messaging`` is closed.
        """
        inbox = self._inbox
        while not inbox.rx:
            if self._state is not _RUNNING:
                self._raise_closed()
            await inbox.arrived.wait()
        if self._state is not _RUNNING:
            self._raise_closed()
        return inbox.pop()

    def receive_nowait(self) -> tuple[str, Message]:
        """The next received message if one is buffered.

        Raises:
            anyio.WouldBlock: none is buffered.
            anyio.ClosedResourceError: the ``Messaging`` is closed.
        """
        if self._state is not _RUNNING:
            self._raise_closed()
        if not self._inbox.rx:
            raise anyio.WouldBlock
        return self._inbox.pop()

    async def receive_batch(self, max_messages: int = 1024) -> list[tuple[str, Message]]:
        """Wait for at least one message; return up to ``max_messages`` of
        those buffered (the fast way to drain a busy stream)."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
        inbox = self._inbox
        if not inbox.rx or self._state is not _RUNNING:
            first = await self.receive()
            if not inbox.rx or max_messages == 1:
                return [first]
            # no await from here on: what leaves the buffer reaches the caller
            return [first, *inbox.pop_batch(max_messages - 1)]
        return inbox.pop_batch(max_messages)

    def _raise_closed(self) -> None:
        raise anyio.ClosedResourceError(
            "Messaging is not started" if self._state is Lifecycle.NEW else "Messaging is closed"
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
        return len(self._inbox)

    async def wait_connected(self, ident: str, timeout: float | None = None) -> None:
        """Wait until the peer ``ident`` is connected and identified.

        Raises:
            TimeoutError: not connected within ``timeout`` seconds.
            anyio.ClosedResourceError: the ``Messaging`` closed.
        """
        self._running()
        with anyio.fail_after(timeout):
            while ident not in self._peers:
                await self._connected.wait()
                if self._state is not _RUNNING:
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
        return f"<Messaging {self.ident!r} {self._state.value} peers={sorted(self._peers)}>"
