"""The engine: one local peer, its per-peer queues and its connections.

Theory of operation
-------------------

``Engine`` is sans-IO.  The I/O layer (sync ``selectors`` or anyio) owns the
sockets and the clock and calls:

* ``connection_made(conn_id, now)`` when a TCP/TLS connection is up (either
  direction: listener and connector are symmetric);
* ``receive_data(conn_id, data, now)`` with whatever bytes arrived;
* ``data_to_send(conn_id)`` to get bytes to write, and ``data_sent(conn_id, n)``
  once ``n`` of them are written (this is what "sent" means, and what makes a
  message leave the queue of a legacy peer);
* ``handed(conn_id, n)`` once ``n`` received messages reached the application
  (this is what the acknowledgement promises);
* ``connection_lost(conn_id, now)`` after the socket is closed;
* ``next_deadline()`` / ``handle_timeout(now)`` for keepalive, handshake and TTL;
* ``send_message(ident, message, now)`` for the application;
* ``take_storage_batch()`` to get the storage changes to apply, in order.

Every call that can produce news returns a list of events (``_events``).

Connection states (one table, ``_TRANSITIONS``)::

    AWAIT_VERSION --PROTOCOL_VERSION--> AWAIT_IDENT --IDENTIFICATION--> ACTIVE
                                         (CAPABILITIES allowed here, once)
    any state --error / INCOMPATIBLE_PROTOCOL / close--> CLOSED

A frame with no entry for the current state is an ``UnexpectedFrameError``;
a frame type we do not know is ignored (that is how 1.6 treats ours).

One connection per remote identifier: a second one that identifies is
refused (``DuplicateIdentError``), except when the two run in opposite
directions (``connection_made(outbound=...)``): then both peers keep the one
dialled by the smaller identifier (``_replaces``), so a mesh in which peers
dial each other settles on the same connection at both ends.  When the
connection closed as redundant is one this peer dialled, ``RedialHeld``
tells the I/O layer to keep its connector from redialling until the peer's
other connection ends: without it the loser of crossed dials would dial,
be refused and back off, forever.

Queues and TTL
--------------

One queue per remote identifier, oldest first.  The first ``in_flight``
items of a connected peer's queue have been encoded for its connection.  For a
capable peer they stay in the queue (and storage) until acknowledged; a
reconnect resends them.  For a legacy peer an item leaves the queue once its
packet was completely written.

Producers are paced by ``queue_full()`` / ``queue_has_room()``: a connected
peer's queue is full at ``max_queued`` messages and has room again at half.

TTL ages only while the destination is not connected: an item carries its
remaining ``ttl`` and ``since``, the moment aging started (queued while away,
or the disconnect), ``None`` while connected.  It expires when
``now - since >= ttl``; so ``ttl=0`` reaches only a connected peer.

De-duplication and acknowledgements
-----------------------------------

Towards a capable peer the receiver keeps, per remote identifier, the uuids of
the last ``dedup_window`` messages handed to the application (persisted with
a storage) and the uuids delivered but not yet handed (``_pending``).  A
message whose uuid is in either is a duplicate: never delivered, but
acknowledged — a copy of a message not yet handed only once the original is
(``_RX_WAIT``), so an ack always means "the application has it".  Acks are
cumulative and in order: ``Ack(count, last_uuid)`` covers the next ``count``
messages of the connection, all handed or duplicates.  A capable peer that
sends more unacknowledged messages than our window is cut off.

Storage
-------

The engine only records changes in a ``StorageBatch``.  ``_stored`` counts the
queues that hold each stored uuid, so that a message sent to several peers is
deleted per queue (``delete_from``) until its last copy leaves (``delete``).
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import struct
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ._errors import (
    DuplicateIdentError,
    HandshakeTimeoutError,
    IdentityMismatchError,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
    LocalProtocolError,
    MalformedFrameError,
    RemoteProtocolError,
    SnakeMQError,
    UnexpectedFrameError,
)
from ._events import (
    CloseConnection,
    ErrorOccurred,
    Event,
    MessageDropped,
    PeerConnected,
    PeerDisconnected,
    RedialHeld,
    _delivered,
    _received,
    _sent,
)
from ._message import FLAG_PERSISTENT, INFINITE_TTL, Message, check_ident
from ._storage import StorageBatch
from ._wire import (
    CAP_ACK,
    DEFAULT_MAX_PACKET_SIZE,
    FRAME_ACK,
    FRAME_CAPABILITIES,
    FRAME_IDENTIFICATION,
    FRAME_INCOMPATIBLE_PROTOCOL,
    FRAME_MESSAGE,
    FRAME_PING,
    FRAME_PONG,
    FRAME_PROTOCOL_VERSION,
    MESSAGE_HEAD,
    MESSAGE_HEAD_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Capabilities,
    Frame,
    Identification,
    IncompatibleProtocol,
    PacketDecoder,
    Ping,
    Pong,
    ProtocolVersion,
    decode_frame,
    encode_packet,
)

log = logging.getLogger("snakemq.engine")

DEFAULT_WINDOW = 4096
"""Unacknowledged messages a peer accepts in flight towards it."""

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
OUTPUT_HIGH_WATER = 512 * 1024
"""``data_to_send()`` stops adding messages once this many bytes are ready."""

_MAX_WIRE_TTL = 0xFFFFFFFE
# a MESSAGE packet's header and frame head in one pack: length, type, uuid, ttl, flags
_PACKET_HEAD = struct.Struct("!IB16sII")
_PACKET_HEAD_SIZE = _PACKET_HEAD.size
# states of a received message on its way to an acknowledgement
_RX_UNHANDED = "unhanded"  # MessageReceived emitted, handed() not yet called
_RX_READY = "ready"  # handed, or a duplicate of a message handed before
_RX_WAIT = "wait"  # duplicate of a message received earlier and not yet handed
_PING_PACKET = encode_packet(Ping().encode())
_PONG_PACKET = encode_packet(Pong().encode())


class ConnState(enum.Enum):
    """Where a connection is in its life (see the table ``_TRANSITIONS``)."""

    AWAIT_VERSION = "await-version"
    AWAIT_IDENT = "await-ident"
    ACTIVE = "active"
    CLOSED = "closed"


class _Item:
    """A queued message and its TTL accounting."""

    __slots__ = ("expires", "message", "reported", "since", "stored", "ttl")

    def __init__(self, message: Message, ttl: float | None, stored: bool) -> None:
        self.message = message
        self.ttl = ttl  # remaining, as of `since`
        self.since: float | None = None  # aging started; None while connected
        self.stored = stored
        self.expires: float | None = None  # since + ttl, when aging
        self.reported = False  # MessageSent already emitted (ack overtook data_sent)


class _Queue:
    __slots__ = ("conn", "ident", "in_flight", "items")

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.items: deque[_Item] = deque()
        self.in_flight = 0  # first items of `items` already encoded for `conn`
        self.conn: _Conn | None = None


class _Conn:
    __slots__ = (
        "ack_count",
        "ack_last",
        "cert_idents",
        "conn_id",
        "deadline_handshake",
        "decoder",
        "emitted",
        "ident",
        "last_recv",
        "legacy",
        "out",
        "out_bytes",
        "outbound",
        "ping_sent",
        "queue",
        "remote_caps",
        "remote_window",
        "rx_order",
        "rx_unready",
        "sent_marks",
        "state",
        "written",
    )

    @property
    def closed(self) -> bool:
        return self.state is ConnState.CLOSED

    def __init__(
        self, conn_id: str, now: float, max_packet_size: int, cert_idents: frozenset[str] | None
    ) -> None:
        self.conn_id = conn_id
        self.state = ConnState.AWAIT_VERSION
        self.decoder = PacketDecoder(max_packet_size)
        self.ident: str | None = None
        self.cert_idents = cert_idents
        self.legacy = True
        self.remote_caps: Capabilities | None = None
        self.remote_window = 0
        self.queue: _Queue | None = None
        self.last_recv = now
        self.ping_sent: float | None = None
        self.outbound: bool | None = None
        self.deadline_handshake = now
        # output: encoded packets not yet returned by data_to_send()
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.emitted = 0  # bytes returned by data_to_send() so far
        self.written = 0  # bytes reported by data_sent() so far
        self.sent_marks: deque[tuple[int, _Item]] = deque()  # (end offset, item)
        # receive side of acknowledgements
        # every received message not yet acknowledged, in arrival order, as
        # [uuid, state]: _RX_UNHANDED, _RX_READY or _RX_WAIT (see _drain_acks)
        self.rx_unready: deque[list[object]] = deque()
        self.rx_order: deque[list[object]] = deque()  # the _RX_UNHANDED entries, in order
        self.ack_count = 0
        self.ack_last = b""


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _wire_ttl(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    return min(int(ttl), _MAX_WIRE_TTL)


class Engine:
    """The protocol engine of one local peer.  Not thread-safe: the I/O layer
    serialises calls (a lock, or one event loop).

    Args:
        ident: this peer's identifier (at most 50 characters).
        persistent: true when the I/O layer applies storage batches; persistent
            messages then go into ``take_storage_batch()``.
        keepalive_interval: seconds of silence on a connection before a ping;
            ``None`` disables keepalive.
        keepalive_wait: seconds to wait for the pong before closing.
        handshake_timeout: seconds a new connection may take to identify.
        max_packet_size: the largest packet accepted from a peer.
        window: how many unacknowledged messages capable peers may send us.
        max_queued: producer flow control (``queue_full()``): a connected
            peer's queue counts as full at this many messages and has room
            again at half of it; ``None`` never fills.
        legacy: behave exactly as a snakeMQ 1.6 peer on the wire (send no
            capabilities); meant for tests and interoperability checks.
    """

    def __init__(
        self,
        ident: str,
        *,
        persistent: bool = False,
        keepalive_interval: float | None = None,
        keepalive_wait: float = 0.5,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        window: int = DEFAULT_WINDOW,
        max_queued: int | None = None,
        legacy: bool = False,
    ) -> None:
        self.ident = check_ident(ident)
        if max_queued is not None and (
            isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 2
        ):
            raise ValueError(f"max_queued must be an int >= 2 or None, got {max_queued!r}")
        self.max_queued = max_queued
        self.persistent = persistent
        if keepalive_interval is not None:
            _check_seconds(keepalive_interval, "keepalive_interval")
        self.keepalive_interval = keepalive_interval
        self.keepalive_wait = _check_seconds(keepalive_wait, "keepalive_wait")
        self.handshake_timeout = _check_seconds(handshake_timeout, "handshake_timeout")
        if isinstance(max_packet_size, bool) or not isinstance(max_packet_size, int):
            raise TypeError("max_packet_size must be an int")
        if max_packet_size < 64:
            raise ValueError(f"max_packet_size must be >= 64 bytes, got {max_packet_size}")
        self.max_packet_size = max_packet_size
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int, not {type(window).__name__}")
        if not 1 <= window <= 0xFFFFFFFF:
            raise ValueError(f"window must be 1..2**32-1 messages, got {window!r}")
        self.window = window
        self.dedup_window = 2 * window
        self.legacy = legacy
        self.report_sent = True
        """Emit ``MessageSent`` events; an I/O layer that nobody listens to
        may turn them off (the queue rules do not change)."""
        self.report_delivered = True
        """Emit ``MessageDelivered`` events (same remark)."""
        self._conns: dict[str, _Conn] = {}
        self._closed_rx: dict[str, _Conn] = {}  # closed, still awaiting handed()
        self._queues: dict[str, _Queue] = {}
        self._by_ident: dict[str, _Conn] = {}
        self._expiry: list[tuple[float, int, _Item, _Queue]] = []
        self._expiry_stale = 0  # entries of _expiry known to be stale
        self._seq = itertools.count()
        self._seen: dict[str, dict[bytes, None]] = {}
        self._pending: dict[str, set[bytes]] = {}
        self._stored: dict[bytes, int] = {}  # uuid -> queues holding it in storage
        self._batch = StorageBatch(seen_keep=self.dedup_window)
        hello: list[Frame] = (
            [ProtocolVersion(), Identification(self.ident)]
            if legacy
            else [
                ProtocolVersion(),
                Capabilities(CAP_ACK, window),
                Identification(self.ident),
            ]
        )
        self._hello = b"".join(encode_packet(f.encode()) for f in hello)

    # ------------------------------------------------------------------ state

    def load(
        self,
        queues: Mapping[str, Sequence[Message]],
        seen: Mapping[str, Sequence[bytes]],
        now: float,
    ) -> list[Event]:
        """Restore queues and the de-duplication window from a storage.

        Call once, before any connection.  Messages' ``ttl`` is what remained.
        """
        events: list[Event] = []
        for ident, messages in queues.items():
            queue = self._queue(ident)
            for message in messages:
                item = _Item(message, message.ttl, stored=True)
                self._stored[message.uuid] = self._stored.get(message.uuid, 0) + 1
                if self._start_aging(item, now, queue):
                    queue.items.append(item)
                else:
                    self._dropped(queue, item, events)
        for ident, uuids in seen.items():
            window = self._seen.setdefault(ident, {})
            for uuid in uuids[-self.dedup_window :]:
                window[uuid] = None
        return events

    def queued(self, ident: str) -> list[Message]:
        """The messages waiting for ``ident`` (in-flight ones included), oldest
        first, each with its remaining TTL as of its last accounting."""
        queue = self._queues.get(ident)
        if queue is None:
            return []
        return [
            i.message if i.ttl == i.message.ttl else i.message.with_ttl(i.ttl) for i in queue.items
        ]

    def queue_full(self, ident: str) -> bool:
        """Whether a producer should wait before queueing more for ``ident``:
        the peer is connected and ``max_queued`` messages wait for it.  (While
        it is away, queues grow and TTLs apply instead.)"""
        limit = self.max_queued
        queue = self._queues.get(ident)
        return (
            limit is not None
            and queue is not None
            and queue.conn is not None
            and len(queue.items) >= limit
        )

    def queue_has_room(self, ident: str) -> bool:
        """Whether a waiting producer may go on: the peer went away, or its
        queue drained to half of ``max_queued`` (hysteresis, so producers wake
        for a batch rather than per message)."""
        limit = self.max_queued
        queue = self._queues.get(ident)
        return (
            limit is None or queue is None or queue.conn is None or len(queue.items) <= limit // 2
        )

    def queue_idents(self) -> list[str]:
        """Identifiers that have a non-empty queue."""
        return [ident for ident, q in self._queues.items() if q.items]

    def connected_idents(self) -> dict[str, str]:
        """``{ident: conn_id}`` of every identified connection."""
        return {ident: c.conn_id for ident, c in self._by_ident.items()}

    def conn_ident(self, conn_id: str) -> str | None:
        """The remote identifier of ``conn_id``, or ``None`` before identification."""
        conn = self._conns.get(conn_id)
        return None if conn is None else conn.ident

    def take_storage_batch(self) -> StorageBatch | None:
        """Return the storage changes collected since the last call, if any."""
        batch = self._batch
        if not batch:
            return None
        self._batch = StorageBatch(seen_keep=self.dedup_window)
        return batch

    # ------------------------------------------------------------ application

    def send_message(self, ident: str, message: Message, now: float) -> list[Event]:
        """Queue ``message`` for ``ident``.

        A persistent message goes into the next storage batch (when this
        engine is persistent and the TTL is not 0).  A ``ttl=0`` message to a
        peer that is not connected is dropped at once (``MessageDropped``).

        Raises:
            TypeError, ValueError: ``ident`` or ``message`` is not valid.
        """
        if not isinstance(message, Message):
            raise TypeError(f"message must be a snakemq Message, not {type(message).__name__}")
        queue = self._queues.get(ident)
        if queue is None:  # every ident with a queue was checked once
            queue = self._queue(check_ident(ident))
        ttl = message.ttl
        if queue.conn is None and ttl == 0:
            return [MessageDropped(ident, message.uuid)]
        stored = self.persistent and ttl != 0 and bool(message.flags & FLAG_PERSISTENT)
        item = _Item(message, ttl, stored)
        queue.items.append(item)
        if stored:
            uuid = message.uuid
            self._stored[uuid] = self._stored.get(uuid, 0) + 1
            self._batch.push.append((ident, message))
        if queue.conn is None:
            self._start_aging(item, now, queue)  # ttl > 0 here: not due yet
        return []

    def purge(self, ident: str) -> list[bytes]:
        """Remove every message waiting for ``ident`` (not those in flight);
        return their uuids.  Storage rows go into the next batch."""
        queue = self._queues.get(ident)
        if queue is None:
            return []
        keep = list(itertools.islice(queue.items, queue.in_flight))
        removed = list(itertools.islice(queue.items, queue.in_flight, None))
        queue.items = deque(keep)
        for item in removed:
            if item.expires is not None:
                item.expires = None
                self._expiry_stale += 1
            if item.stored:
                self._unstore(ident, item.message.uuid)
        self._compact_expiry()
        return [i.message.uuid for i in removed]

    # ------------------------------------------------------------ connections

    def connection_made(
        self,
        conn_id: str,
        now: float,
        *,
        cert_idents: Iterable[str] | None = None,
        outbound: bool | None = None,
    ) -> None:
        """Register a new connection; its handshake is in ``data_to_send()``.

        Args:
            cert_idents: when given, the remote peer must identify with one of
                these names (taken from its verified TLS certificate).
            outbound: whether this peer dialled the connection (``True``) or
                accepted it (``False``).  When two peers dial each other, both
                keep the connection dialled by the peer with the smaller
                identifier and close the other; without it, the second
                connection to identify is refused as a duplicate.
        """
        if conn_id in self._conns:
            raise LocalProtocolError(f"connection {conn_id!r} is already registered")
        if isinstance(cert_idents, str):
            raise TypeError("cert_idents must be a collection of names, not one str")
        conn = _Conn(
            conn_id,
            now,
            self.max_packet_size,
            None if cert_idents is None else frozenset(cert_idents),
        )
        conn.deadline_handshake = now + self.handshake_timeout
        conn.outbound = outbound
        conn.out.append(self._hello)
        conn.out_bytes = len(self._hello)
        self._conns[conn_id] = conn

    def connection_lost(self, conn_id: str, now: float) -> list[Event]:
        """The socket of ``conn_id`` is closed (by either side)."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        events: list[Event] = []
        self._detach(conn, now, events)
        return events

    def _detach(self, conn: _Conn, now: float, events: list[Event]) -> None:
        conn_id = conn.conn_id
        conn.state = ConnState.CLOSED
        conn.out.clear()
        conn.out_bytes = 0
        conn.sent_marks.clear()
        if conn.rx_order:
            self._closed_rx[conn_id] = conn
        queue = conn.queue
        if queue is not None and conn.ident is not None:
            del self._by_ident[conn.ident]
            queue.conn = None
            queue.in_flight = 0
            kept: deque[_Item] = deque()
            for item in queue.items:
                if self._start_aging(item, now, queue):
                    kept.append(item)
                else:
                    self._dropped(queue, item, events)  # ttl=0: only while connected
            queue.items = kept
            events.append(PeerDisconnected(conn_id, conn.ident))

    def close(self, conn_id: str, error: SnakeMQError | None = None) -> list[Event]:
        """Ask for a connection to be closed (e.g. the application wants it)."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is ConnState.CLOSED:
            return []
        return self._fail(conn, error) if error is not None else self._closing(conn)

    def wants_write(self, conn_id: str) -> bool:
        """True when ``data_to_send(conn_id)`` would return bytes."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        if conn.out_bytes:
            return True
        queue = conn.queue
        if queue is None or conn.state is not ConnState.ACTIVE:
            return False
        return len(queue.items) > queue.in_flight and (
            conn.legacy or queue.in_flight < conn.remote_window
        )

    def data_to_send(self, conn_id: str, limit: int = OUTPUT_HIGH_WATER) -> bytes:
        """Return the next bytes to write to ``conn_id`` (``b""`` if none).

        The bytes are the caller's to write, in order, before asking again;
        report progress with ``data_sent()``.  Messages are added while fewer
        than ``limit`` bytes are ready and the peer's window allows.
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            return b""
        out = conn.out
        queue = conn.queue
        if queue is not None and conn.state is ConnState.ACTIVE:
            items = queue.items
            n = len(items)
            i = queue.in_flight
            stop = n if conn.legacy else min(n, conn.remote_window)
            if i < stop:
                size = conn.out_bytes
                offset = conn.emitted
                marks = conn.sent_marks
                pack = _PACKET_HEAD.pack
                extra = _PACKET_HEAD_SIZE - 4  # the packet header is not in the length
                # islice walks the deque once; items[i] would walk it per message
                for item in itertools.islice(items, i, stop):
                    if size >= limit:
                        break
                    msg = item.message
                    data = msg.data
                    ttl = item.ttl
                    if ttl is None:
                        wire_ttl = INFINITE_TTL
                    else:
                        wire_ttl = int(ttl)
                        if wire_ttl > _MAX_WIRE_TTL:
                            wire_ttl = _MAX_WIRE_TTL
                    out.append(
                        pack(len(data) + extra, FRAME_MESSAGE, msg.uuid, wire_ttl, msg.flags)
                    )
                    out.append(data)
                    size += len(data) + _PACKET_HEAD_SIZE
                    marks.append((offset + size, item))
                    i += 1
                queue.in_flight = i
                conn.out_bytes = size
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        conn.emitted += conn.out_bytes
        conn.out_bytes = 0
        return data

    def data_sent(self, conn_id: str, nbytes: int) -> list[Event]:
        """``nbytes`` more of the bytes from ``data_to_send()`` were written."""
        conn = self._conns.get(conn_id)
        if conn is None or nbytes <= 0:
            return []
        conn.written += nbytes
        if conn.written > conn.emitted:
            raise LocalProtocolError(
                f"data_sent() reports {conn.written} bytes written on {conn_id!r}, "
                f"but data_to_send() returned only {conn.emitted}"
            )
        marks = conn.sent_marks
        if not marks or marks[0][0] > conn.written:
            return []
        events: list[Event] = []
        written = conn.written
        ident = conn.ident
        assert ident is not None and conn.queue is not None
        queue = conn.queue
        legacy = conn.legacy
        report = self.report_sent
        while marks and marks[0][0] <= written:
            _, item = marks.popleft()
            if item.reported:  # already reported when it was acknowledged
                continue
            if report:
                events.append(_sent(conn_id, ident, item.message.uuid))
            if legacy:
                # 1.6 semantics: leaves the queue once completely written
                popped = queue.items.popleft()
                queue.in_flight -= 1
                if popped.stored:
                    self._unstore(ident, popped.message.uuid)
        return events

    # ---------------------------------------------------------------- receive

    def receive_data(
        self, conn_id: str, data: bytes | bytearray | memoryview, now: float
    ) -> list[Event]:
        """Feed bytes received on ``conn_id``; return what happened.

        ``data`` may be a view of a read buffer the caller reuses once this
        returns: the engine copies what it keeps (message payloads become
        ``bytes`` of their own).
        """
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is ConnState.CLOSED:
            return []
        conn.last_recv = now
        conn.ping_sent = None
        events: list[Event] = []
        try:
            packets = conn.decoder.feed(data)
            count = len(packets)
            i = 0
            while i < count:
                if conn.state is ConnState.ACTIVE:
                    # the hot path: a run of MESSAGE frames
                    i = self._receive_messages(conn, packets, i, events)
                    if i >= count:
                        continue  # ends the loop through its else clause
                packet = packets[i]
                i += 1
                if len(packet) == 0:
                    raise MalformedFrameError(
                        "empty packet: a packet must hold at least a frame type byte"
                    )
                ftype = packet[0]
                handler = _TRANSITIONS.get((conn.state, ftype))
                if handler is None:
                    if ftype in _KNOWN_FRAMES:
                        raise UnexpectedFrameError(
                            f"frame type {ftype} is not allowed in state {conn.state.value}"
                        )
                    continue  # unknown frame types are ignored (the extension door)
                frame = decode_frame(packet)
                handler(self, conn, frame, now, events)
                if conn.closed:
                    break
            else:
                if conn.decoder.pending_error:
                    conn.decoder.feed(b"")  # raises PacketTooLargeError
        except RemoteProtocolError as exc:
            events.extend(self._fail(conn, exc))
        if conn.ack_count and conn.state is ConnState.ACTIVE:
            self._emit_ack(conn)
        return events

    def handed(self, conn_id: str, count: int) -> None:
        """``count`` messages received on ``conn_id`` (in the order of their
        ``MessageReceived`` events) reached the application.

        Call it for every ``MessageReceived``, also after ``connection_lost()``
        of its connection: a resent copy of a message not yet handed is
        acknowledged only once the original is.
        """
        conn = self._conns.get(conn_id) or self._closed_rx.get(conn_id)
        if conn is None or conn.legacy or count <= 0:
            return
        order = conn.rx_order
        if count > len(order):
            raise LocalProtocolError(
                f"handed({conn_id!r}, {count}) covers more messages than were received "
                f"and not yet handed ({len(order)})"
            )
        ident = conn.ident
        assert ident is not None
        seen = self._seen.setdefault(ident, {})
        pending = self._pending.get(ident)
        record = self.persistent
        batch_seen = self._batch.seen
        for _ in range(count):
            entry = order.popleft()
            entry[1] = _RX_READY
            uuid = entry[0]
            assert isinstance(uuid, bytes)
            seen[uuid] = None
            if pending is not None:
                pending.discard(uuid)
            if record:
                batch_seen.append((ident, uuid))
        excess = len(seen) - self.dedup_window
        if excess > 0:
            for old in list(itertools.islice(seen, excess)):
                del seen[old]
        self._drain_acks(conn)
        if not order:
            self._closed_rx.pop(conn_id, None)
        live = self._by_ident.get(ident)
        if live is not None and live is not conn and live.rx_unready:
            # resent copies of what was just handed may be waiting there
            self._drain_acks(live)

    def _drain_acks(self, conn: _Conn) -> None:
        """Acknowledge the longest prefix of ``rx_unready`` that may be: messages
        handed (_RX_READY) and copies of messages whose original, received on an
        earlier connection, has been handed since (_RX_WAIT)."""
        unready = conn.rx_unready
        assert conn.ident is not None
        pending = self._pending.get(conn.ident) or ()
        while unready:
            uuid, state = unready[0]
            if state is _RX_UNHANDED or (state is _RX_WAIT and uuid in pending):
                break
            unready.popleft()
            conn.ack_count += 1
            assert isinstance(uuid, bytes)
            conn.ack_last = uuid
        if conn.state is ConnState.ACTIVE and conn.ack_count:
            self._emit_ack(conn)

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timeout()`` has work, or ``None``."""
        deadline: float | None = None
        heap = self._expiry
        while heap:
            expires, _, item, _q = heap[0]
            if item.expires == expires:
                deadline = expires
                break
            heapq.heappop(heap)  # stale: delivered, reconnected or re-aged
            if self._expiry_stale:
                self._expiry_stale -= 1
        interval = self.keepalive_interval
        for conn in self._conns.values():
            if conn.state is ConnState.CLOSED:
                continue
            if conn.state is not ConnState.ACTIVE:
                d = conn.deadline_handshake
            elif interval is None:
                continue
            elif conn.ping_sent is None:
                d = conn.last_recv + interval
            else:
                d = conn.ping_sent + self.keepalive_wait
            if deadline is None or d < deadline:
                deadline = d
        return deadline

    def handle_timeout(self, now: float) -> list[Event]:
        """Do what is due at ``now``: drop expired messages, ping, close."""
        events: list[Event] = []
        heap = self._expiry
        expired: dict[_Queue, list[_Item]] = {}
        while heap and heap[0][0] <= now:
            expires, _, item, queue = heapq.heappop(heap)
            if item.expires != expires:
                if self._expiry_stale:
                    self._expiry_stale -= 1
                continue
            item.expires = None
            expired.setdefault(queue, []).append(item)
            self._dropped(queue, item, events)
        for queue, gone in expired.items():
            if len(gone) == 1:
                queue.items.remove(gone[0])
            else:
                # one pass, not one deque.remove() scan per item
                ids = {id(i) for i in gone}
                queue.items = deque(i for i in queue.items if id(i) not in ids)
        interval = self.keepalive_interval
        for conn in list(self._conns.values()):
            if conn.state is ConnState.CLOSED:
                continue
            if conn.state is not ConnState.ACTIVE:
                if now >= conn.deadline_handshake:
                    events.extend(
                        self._fail(
                            conn,
                            HandshakeTimeoutError(
                                f"peer did not identify within {self.handshake_timeout} s"
                            ),
                        )
                    )
                continue
            if interval is None:
                continue
            if conn.ping_sent is None:
                if now - conn.last_recv >= interval:
                    conn.ping_sent = now
                    self._out(conn, _PING_PACKET)
            elif now - conn.ping_sent >= self.keepalive_wait:
                events.extend(
                    self._fail(
                        conn,
                        KeepaliveTimeoutError(
                            f"no answer to a keepalive ping within {self.keepalive_wait} s"
                        ),
                    )
                )
        return events

    # --------------------------------------------------------------- internal

    def _queue(self, ident: str) -> _Queue:
        queue = self._queues.get(ident)
        if queue is None:
            queue = self._queues[ident] = _Queue(ident)
        return queue

    def _start_aging(self, item: _Item, now: float, queue: _Queue) -> bool:
        """Start consuming ``item``'s TTL at ``now``; False if it is due at once
        (the caller removes it from its queue and reports the drop)."""
        if item.ttl is None:
            item.since = now
            return True
        if item.ttl <= 0:
            item.expires = None
            return False
        item.since = now
        item.expires = now + item.ttl
        heapq.heappush(self._expiry, (item.expires, next(self._seq), item, queue))
        return True

    def _compact_expiry(self) -> None:
        """Drop stale timer entries once they are the majority, so a peer that
        reconnects often does not grow the heap by its queue length each time."""
        heap = self._expiry
        if self._expiry_stale > 256 and 2 * self._expiry_stale > len(heap):
            heap[:] = [e for e in heap if e[2].expires == e[0]]
            heapq.heapify(heap)
            self._expiry_stale = 0

    def _unstore(self, ident: str, uuid: bytes) -> None:
        """A stored message left ident's queue: delete its row."""
        left = self._stored.pop(uuid, 1) - 1
        if left > 0:
            # the same message waits in another queue too: delete this copy only
            self._stored[uuid] = left
            self._batch.delete_from.append((ident, uuid))
        else:
            self._batch.delete.append(uuid)

    def _dropped(self, queue: _Queue, item: _Item, events: list[Event]) -> None:
        if item.stored:
            self._unstore(queue.ident, item.message.uuid)
        events.append(MessageDropped(queue.ident, item.message.uuid))

    def _out(self, conn: _Conn, packet: bytes) -> None:
        conn.out.append(packet)
        conn.out_bytes += len(packet)

    def _closing(self, conn: _Conn) -> list[Event]:
        conn.state = ConnState.CLOSED
        return [CloseConnection(conn.conn_id)]

    def _fail(self, conn: _Conn, error: SnakeMQError) -> list[Event]:
        if conn.state is ConnState.CLOSED:
            return []
        routine = isinstance(error, DuplicateIdentError) and error.crossed
        log.log(
            logging.INFO if routine else logging.WARNING,
            "conn=%s ident=%s closing: %s",
            conn.conn_id,
            conn.ident,
            error,
        )
        return [ErrorOccurred(conn.conn_id, conn.ident, error), *self._closing(conn)]

    def _emit_ack(self, conn: _Conn) -> None:
        self._out(conn, encode_packet(Ack(conn.ack_count, conn.ack_last).encode()))
        conn.ack_count = 0

    # frame handlers: (engine, conn, frame, now, events)

    def _on_version(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        assert isinstance(frame, ProtocolVersion)
        if frame.version != PROTOCOL_VERSION:
            self._out(conn, encode_packet(IncompatibleProtocol().encode()))
            raise IncompatibleProtocolError(
                f"remote peer speaks protocol version {frame.version}, we speak {PROTOCOL_VERSION}"
            )
        conn.state = ConnState.AWAIT_IDENT

    def _on_incompatible(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        raise IncompatibleProtocolError(
            f"remote peer refused our protocol version {PROTOCOL_VERSION}"
        )

    def _on_capabilities(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        assert isinstance(frame, Capabilities)
        if conn.remote_caps is not None:
            raise UnexpectedFrameError("CAPABILITIES sent twice")
        conn.remote_caps = frame

    def _on_identification(
        self, conn: _Conn, frame: object, now: float, events: list[Event]
    ) -> None:
        assert isinstance(frame, Identification)
        ident = frame.ident
        if ident == self.ident:
            raise DuplicateIdentError(
                f"remote peer identified as {ident!r}, which is this peer's own identifier"
            )
        if conn.cert_idents is not None and ident not in conn.cert_idents:
            names = ", ".join(sorted(conn.cert_idents)) or "no names"
            raise IdentityMismatchError(
                f"remote peer identified as {ident!r} but its certificate names {names}"
            )
        other = self._by_ident.get(ident)
        if other is not None:
            if not self._replaces(conn, other, ident):
                if conn.outbound:
                    # our own dial is the redundant one: its connector waits
                    events.append(RedialHeld(conn.conn_id, ident))
                    duplicate = DuplicateIdentError(
                        f"peer {ident!r} is already connected over {other.conn_id}; this "
                        "dialled connection is closed and its connector waits until that "
                        "one ends"
                    )
                else:
                    duplicate = DuplicateIdentError(f"peer {ident!r} is already connected")
                both_known = conn.outbound is not None and other.outbound is not None
                duplicate.crossed = both_known and conn.outbound != other.outbound
                raise duplicate
            # the two peers dialled each other: both keep the same connection
            log.info(
                "conn=%s ident=%s: keeping this one of two crossed connections", conn.conn_id, ident
            )
            del self._conns[other.conn_id]
            self._detach(other, now, events)
            if other.outbound:
                events.append(RedialHeld(other.conn_id, ident))
            events.append(CloseConnection(other.conn_id))
        caps = conn.remote_caps
        conn.legacy = self.legacy or caps is None or not caps.bits & CAP_ACK
        if not conn.legacy:
            assert caps is not None
            conn.remote_window = caps.window
        conn.ident = ident
        conn.state = ConnState.ACTIVE
        queue = self._queue(ident)
        queue.conn = conn
        queue.in_flight = 0
        conn.queue = queue
        self._by_ident[ident] = conn
        update = self._batch.update_ttl
        kept: deque[_Item] = deque()
        for item in queue.items:
            if item.expires is not None:
                # the same float the timer compares, so both agree at the boundary
                remaining = item.expires - now
                if remaining <= 0:
                    # due, but handle_timeout() did not run yet
                    item.expires = None
                    self._expiry_stale += 1
                    self._dropped(queue, item, events)
                    continue
                item.ttl = remaining
                if item.stored:
                    uuid = item.message.uuid
                    if self._stored.get(uuid, 1) > 1:
                        self._batch.update_ttl_in.append((ident, uuid, remaining))
                    else:
                        update.append((uuid, remaining))
            item.since = None
            if item.expires is not None:
                item.expires = None
                self._expiry_stale += 1
            kept.append(item)
        queue.items = kept
        self._compact_expiry()
        events.append(PeerConnected(conn.conn_id, ident, conn.legacy))

    def _replaces(self, new: _Conn, old: _Conn, ident: str) -> bool:
        """Whether ``new`` wins over ``old`` (both to ``ident``): only crossed
        dials do, and the one dialled by the smaller identifier is kept."""
        if new.outbound is None or old.outbound is None or new.outbound == old.outbound:
            return False
        return new.outbound == (self.ident < ident)

    def _on_ping(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        self._out(conn, _PONG_PACKET)

    def _on_pong(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        pass

    def _on_ack(self, conn: _Conn, frame: object, now: float, events: list[Event]) -> None:
        assert isinstance(frame, Ack)
        if conn.legacy:
            raise UnexpectedFrameError("ACK from a peer that did not announce acknowledgements")
        queue = conn.queue
        assert queue is not None and conn.ident is not None
        count = frame.count
        if count > queue.in_flight:
            raise MalformedFrameError(
                f"ACK covers {count} messages but only {queue.in_flight} are in flight"
            )
        if queue.items[count - 1].message.uuid != frame.last_uuid:
            raise MalformedFrameError("ACK names a uuid that is not the one it counts to")
        ident = conn.ident
        marks = conn.sent_marks
        nmarks = len(marks)
        j = 0  # marks not yet reached by data_sent(): the acked ones come first
        items = queue.items
        report_sent = self.report_sent
        report_delivered = self.report_delivered
        for _ in range(count):
            item = items.popleft()
            uuid = item.message.uuid
            if j < nmarks and marks[j][1] is item:
                # acknowledged before data_sent() caught up (async I/O race)
                if report_sent:
                    events.append(_sent(conn.conn_id, ident, uuid))
                item.reported = True
                j += 1
            if item.stored:
                self._unstore(ident, uuid)
            if report_delivered:
                events.append(_delivered(ident, uuid))
        queue.in_flight -= count

    def _receive_messages(
        self, conn: _Conn, packets: list[memoryview], i: int, events: list[Event]
    ) -> int:
        """Handle the run of MESSAGE frames starting at ``packets[i]``; return
        the index of the first packet that is not one.  This loop is the
        receive hot path: everything it needs is bound to locals once."""
        count = len(packets)
        ident = conn.ident
        assert ident is not None
        conn_id = conn.conn_id
        unpack = MESSAGE_HEAD.unpack_from
        append = events.append
        head = MESSAGE_HEAD_SIZE
        if conn.legacy:
            while i < count:
                packet = packets[i]
                if not packet or packet[0] != FRAME_MESSAGE:
                    return i
                if len(packet) < head:
                    raise _short_message(len(packet))
                _, uuid, ttl, flags = unpack(packet)
                append(
                    _received(
                        conn_id,
                        ident,
                        _trusted_message(
                            packet[head:].tobytes(),
                            None if ttl == INFINITE_TTL else float(ttl),
                            flags,
                            uuid,
                        ),
                    )
                )
                i += 1
            return i
        pending = self._pending.get(ident)
        if pending is None:
            pending = self._pending[ident] = set()
        seen = self._seen.get(ident) or {}
        unready = conn.rx_unready
        order = conn.rx_order
        window = self.window
        while i < count:
            packet = packets[i]
            if not packet or packet[0] != FRAME_MESSAGE:
                return i
            if len(packet) < head:
                raise _short_message(len(packet))
            i += 1
            if len(unready) >= window:
                # every entry is a message the sender has not seen acknowledged
                raise UnexpectedFrameError(
                    f"peer sent more than the receive window of {window} unacknowledged messages"
                )
            _, uuid, ttl, flags = unpack(packet)
            if uuid in pending:
                # a copy of a message received but not yet handed (on an earlier
                # connection): acknowledged once the original is handed
                unready.append([uuid, _RX_WAIT])
                continue
            if uuid in seen:
                if unready:
                    unready.append([uuid, _RX_READY])
                else:
                    conn.ack_count += 1
                    conn.ack_last = uuid
                continue
            pending.add(uuid)
            entry: list[object] = [uuid, _RX_UNHANDED]
            unready.append(entry)
            order.append(entry)
            append(
                _received(
                    conn_id,
                    ident,
                    _trusted_message(
                        packet[head:].tobytes(),
                        None if ttl == INFINITE_TTL else float(ttl),
                        flags,
                        uuid,
                    ),
                )
            )
        return i


def _short_message(size: int) -> MalformedFrameError:
    return MalformedFrameError(
        f"MESSAGE frame of {size} bytes is shorter than its {MESSAGE_HEAD_SIZE}-byte head"
    )


_trusted_message = Message._trusted

_KNOWN_FRAMES = frozenset(
    {
        FRAME_PROTOCOL_VERSION,
        FRAME_INCOMPATIBLE_PROTOCOL,
        FRAME_IDENTIFICATION,
        FRAME_MESSAGE,
        FRAME_PING,
        FRAME_PONG,
        FRAME_CAPABILITIES,
        FRAME_ACK,
    }
)

_S = ConnState
_TRANSITIONS = {
    (_S.AWAIT_VERSION, FRAME_PROTOCOL_VERSION): Engine._on_version,
    (_S.AWAIT_VERSION, FRAME_INCOMPATIBLE_PROTOCOL): Engine._on_incompatible,
    (_S.AWAIT_IDENT, FRAME_CAPABILITIES): Engine._on_capabilities,
    (_S.AWAIT_IDENT, FRAME_IDENTIFICATION): Engine._on_identification,
    (_S.AWAIT_IDENT, FRAME_PING): Engine._on_ping,
    (_S.AWAIT_IDENT, FRAME_PONG): Engine._on_pong,
    (_S.AWAIT_IDENT, FRAME_INCOMPATIBLE_PROTOCOL): Engine._on_incompatible,
    (_S.ACTIVE, FRAME_ACK): Engine._on_ack,
    (_S.ACTIVE, FRAME_PING): Engine._on_ping,
    (_S.ACTIVE, FRAME_PONG): Engine._on_pong,
    (_S.ACTIVE, FRAME_INCOMPATIBLE_PROTOCOL): Engine._on_incompatible,
    # FRAME_MESSAGE in ACTIVE is dispatched directly (hot path) by receive_data
}
"""Every allowed (state, frame type); anything else known is a protocol error."""
