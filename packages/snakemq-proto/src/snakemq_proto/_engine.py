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

A message is *settled* — done with, gone from queue and storage — when a
capable peer acknowledged it (``MessageDelivered``) or, towards a legacy
peer, when its packet was completely written (``MessageSent`` with
``settled``).  Both I/O packages report that one rule: the anyio receipt
resolves on it, the sync package calls ``on_message_settled``.
* ``handed(conn_id, n)`` once ``n`` received messages reached the application
  (this is what the acknowledgement promises);
* ``connection_lost(conn_id, now)`` after the socket is closed;
* ``next_deadline()`` / ``handle_timeout(now)`` for keepalive, handshake, TTL
  and stalled writes;
* ``writing(conn_id, now)`` when it starts writing what ``data_to_send()``
  returned (the write-stall rule, ``_stall``);
* ``send_message(ident, message, now)`` for the application;
* ``take_storage_batch()`` to get the storage changes to apply, in order.

Every call that can produce news returns a list of events (``_events``).

The engine is a router: it owns no connection, queue or window state of its
own, only the maps that find them.

* ``Session`` (``_session``): one per connection — its state machine (one
  transition table carrying the next state), its output stream, keepalive
  and handshake deadlines.
* ``PeerQueue`` (``_queue``): one per remote identifier — order, the
  in-flight prefix, TTL aging and expiry (one ``ExpiryTimer`` for all),
  producer pacing.
* ``PeerWindow`` / ``ReceiveWindow`` (``_window``): de-duplication per
  remote identifier, handed messages and cumulative acks per connection.
* ``StorageLedger`` (``_ledger``): the storage changes of all of them, and
  how many queues hold each stored message.
* ``_wire``: every byte layout, the batch paths of MESSAGE frames included.

What the engine itself decides is which connection carries which peer.  One
connection per remote identifier: a second one that identifies is refused
(``DuplicateIdentError``), except when the two run in opposite directions
(``connection_made(outbound=...)``): then both peers keep the one dialled by
the smaller identifier (``_replaces``), so a mesh in which peers dial each
other settles on the same connection at both ends.  When the connection
closed as redundant is one this peer dialled, ``RedialHeld`` tells the I/O
layer to keep its connector from redialling until the peer's other
connection ends: without it the loser of crossed dials would dial, be
refused and back off, forever.

A connection we dialled is never replaced on the word of whoever dialled
us: anyone can connect and *say* it is ``aaa``.  When the rule would keep
a newcomer that dialled us over our live dial to the same identifier, the
newcomer waits (``AWAIT_TAKEOVER``, its packets held) until our dial is
closed — which the real peer does, resolving the crossed dials by the same
rule, and a stranger cannot.  If that does not happen before the handshake
deadline the newcomer is refused.  A snakeMQ 1.6 newcomer never closes
anything, so it is refused at once while our dial lives.  (A stranger that
connects while the peer is *not* connected is the plain-TCP case: only TLS
identity binding, ``cert_idents``, tells peers apart.)

A session closed while the application still holds messages it delivered
stays reachable for ``handed()`` (``_closed_rx``): a resent copy of such a
message on the next connection is acknowledged only once the original is.

De-duplication is bounded in count and in time.  Per remote identifier the
engine keeps the uuids of the last ``2 * window`` messages handed (a sender
never has more than ``window`` unacknowledged, so every resend is among
them; ~85 B each, ~0.75 MiB at the default window), and only while the peer
is connected or has been gone less than ``dedup_linger`` seconds: then its
window is forgotten (``_gone``, checked by ``handle_timeout``), so a
program that hears from many short-lived identifiers does not grow.  What
de-duplication promises: a copy received within those bounds is never
handed twice; a copy of a message older than ``2 * window`` messages, or
resent after its sender stayed away longer than ``dedup_linger``, may be
handed again (at-least-once).  A storage keeps the last ``2 * window``
uuids per identifier too, reloaded at a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from ._errors import DuplicateIdentError, LocalProtocolError, SnakeMQError
from ._events import CloseConnection, Event, PeerConnected, PeerDisconnected, RedialHeld
from ._ledger import StorageLedger
from ._message import Message, check_ident
from ._queue import ExpiryTimer, PeerQueue
from ._session import _ACTIVE, _CLOSED, ConnState, Session, earliest_deadline
from ._stall import WriteStalls
from ._storage import FillRequest, StorageBatch, StoredState
from ._unidentified import DEFAULT_MAX_UNIDENTIFIED, UnidentifiedCap
from ._window import PeerWindow, ReceiveWindow
from ._wire import (
    CAP_ACK,
    DEFAULT_MAX_PACKET_SIZE,
    Capabilities,
    Frame,
    Identification,
    ProtocolVersion,
    encode_packet,
)

__all__ = [
    "DEFAULT_DEDUP_LINGER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_WINDOW",
    "OUTPUT_HIGH_WATER",
    "ConnState",
    "Engine",
]

log = logging.getLogger("snakemq.engine")

DEFAULT_WINDOW = 4096
"""Unacknowledged messages a peer accepts in flight towards it."""

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
DEFAULT_DEDUP_LINGER = 600.0
"""Seconds a gone peer's de-duplication window is kept (``Engine.dedup_linger``)."""
FORGET_BATCH = 256
"""Gone peers' windows ``handle_timeout()`` forgets at most per call."""
DEFAULT_UNIDENTIFIED_BUDGET = 16 * 1024 * 1024
"""Bytes all unidentified connections together may make an engine keep."""
OUTPUT_HIGH_WATER = 512 * 1024
"""``data_to_send()`` stops adding messages once this many bytes are ready."""


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


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
        unidentified_budget: bytes that all connections which have not
            identified yet may make us keep together (each one at most a
            handshake frame, ``HANDSHAKE_MAX_PACKET``, or ``HELD_MAX`` while
            it awaits a crossed-dial takeover); beyond it, the connection
            that asks for more is closed (``PacketTooLargeError``).
        dedup_linger: seconds a peer's de-duplication window (the uuids of
            the last ``2 * window`` messages it sent) outlives its last
            connection; a copy it resends after reconnecting later than that
            may be handed again.  Settable attribute.
        write_stall_timeout: seconds a write started with ``writing()`` may
            take before the connection is closed (``SlowReaderError``: the
            peer does not read); ``None`` (the default of this sans-IO core;
            both I/O packages use ``DEFAULT_WRITE_STALL_TIMEOUT``) turns it off.
        max_unidentified: accepted connections (``outbound`` not True) that
            may await identification at once; a new one beyond that closes
            the oldest (see ``_unidentified``).
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
        unidentified_budget: int = DEFAULT_UNIDENTIFIED_BUDGET,
        dedup_linger: float = DEFAULT_DEDUP_LINGER,
        write_stall_timeout: float | None = None,
        max_unidentified: int = DEFAULT_MAX_UNIDENTIFIED,
    ) -> None:
        self.ident = check_ident(ident)
        self._unidentified = UnidentifiedCap(max_unidentified)
        self._stalls = WriteStalls(None)
        self.write_stall_timeout = write_stall_timeout
        self._last_deadline: float | None = None
        if (
            isinstance(unidentified_budget, bool)
            or not isinstance(unidentified_budget, int)
            or unidentified_budget < 0
        ):
            raise ValueError(
                f"unidentified_budget must be an int >= 0, got {unidentified_budget!r}"
            )
        self.unidentified_budget = unidentified_budget
        self.unidentified_used = 0
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
        self.dedup_linger = _check_seconds(dedup_linger, "dedup_linger")
        self.legacy = legacy
        self.report_sent = True
        """Emit ``MessageSent`` events; an I/O layer that nobody listens to
        may turn them off (the queue rules do not change).  Towards a legacy
        peer they are also what reports settlement (``MessageSent.settled``):
        keep them on to learn when such a message is done with."""
        self.report_delivered = True
        """Emit ``MessageDelivered`` events (same remark)."""
        self._conns: dict[str, Session] = {}
        self._closed_rx: dict[str, Session] = {}  # closed, still awaiting handed()
        self._by_ident: dict[str, Session] = {}
        self._queues: dict[str, PeerQueue] = {}
        self._on_disk: list[PeerQueue] = []  # restored queues with rows not read yet
        self._windows: dict[str, PeerWindow] = {}
        self._gone: dict[str, float] = {}  # ident -> when its window's peer went away, oldest first
        self._ledger = StorageLedger(seen_keep=self.dedup_window)
        self._expiry = ExpiryTimer()
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
            self._queue(ident).load(messages, now, events)
        for ident, uuids in seen.items():
            self._window(ident).load(list(uuids))
            self._gone[ident] = now  # not connected: forgotten unless it comes back
        return events

    def restore(self, state: StoredState, now: float) -> list[Event]:
        """``load()`` a state from ``snakemq_proto.load_state()``: with a
        ``WindowedStorage`` each queue's rows after its window stay on disk
        and are asked for by ``fill_requests()``."""
        events = self.load(state.queues, state.seen, now)
        self._ledger.window = state.window  # live persistent sends spill past it
        for ident, (after, end) in state.rest.items():
            queue = self._queue(ident)
            queue.set_disk(after, end, state.window, now)
            self._on_disk.append(queue)
        return events

    def fill_requests(self) -> list[FillRequest]:
        """Reads a restored queue needs from its storage (each once, until
        ``filled()``): call ``storage.read_queue(r.ident, r.after, r.end,
        r.count)`` in order with the storage batches, then ``filled()``."""
        spilling = self._ledger.spilling
        if spilling:  # queues that started spilling persistent sends
            listed = set(map(id, self._on_disk))
            for ident in spilling:
                queue = self._queues.get(ident)
                if queue is not None and queue.disk is not None and id(queue) not in listed:
                    listed.add(id(queue))
                    self._on_disk.append(queue)
            spilling.clear()
        on_disk = self._on_disk
        if not on_disk:
            return []
        requests = []
        for queue in on_disk:
            wanted = queue.fill_request()
            if wanted is not None:
                requests.append(FillRequest(queue.ident, *wanted))
        self._on_disk = [q for q in on_disk if q.disk is not None]
        return requests

    def filled(
        self, request: FillRequest, rows: Sequence[tuple[int, Message]], now: float
    ) -> list[Event]:
        """The rows ``storage.read_queue()`` returned for ``request``: they
        join the queue (those whose TTL ran out meanwhile are dropped)."""
        events: list[Event] = []
        queue = self._queues.get(request.ident)
        if queue is None:
            return events  # purged and forgotten meanwhile
        queue.filled(rows, request.count, now, events)
        if queue.disk is None:
            self._on_disk = [q for q in self._on_disk if q.disk is not None]
        return events

    def fill_failed(self, request: FillRequest) -> None:
        """Reading ``request`` failed: ``fill_requests()`` asks again."""
        queue = self._queues.get(request.ident)
        if queue is not None:
            queue.filling = False

    def queued(self, ident: str) -> list[Message]:
        """The messages waiting for ``ident`` (in-flight ones included), oldest
        first, each with its remaining TTL as of its last accounting.  Of a
        restored queue, the rows still on disk are not listed."""
        queue = self._queues.get(ident)
        return [] if queue is None else queue.queued()

    def queue_full(self, ident: str) -> bool:
        """Whether a producer should wait before queueing more for ``ident``:
        the peer is connected and ``max_queued`` messages wait for it.  (While
        it is away, queues grow and TTLs apply instead.)"""
        queue = self._queues.get(ident)
        return queue is not None and queue.full(self.max_queued)

    def queue_has_room(self, ident: str) -> bool:
        """Whether a waiting producer may go on: the peer went away, or its
        queue drained to half of ``max_queued`` (hysteresis, so producers wake
        for a batch rather than per message)."""
        queue = self._queues.get(ident)
        return queue is None or queue.has_room(self.max_queued)

    def queue_idents(self) -> list[str]:
        """Identifiers that have a non-empty queue."""
        return [ident for ident, q in self._queues.items() if q.items or q.disk is not None]

    def connected_idents(self) -> dict[str, str]:
        """``{ident: conn_id}`` of every identified connection."""
        return {ident: c.conn_id for ident, c in self._by_ident.items()}

    def conn_ident(self, conn_id: str) -> str | None:
        """The remote identifier of ``conn_id``, or ``None`` before identification."""
        session = self._conns.get(conn_id)
        return None if session is None else session.ident

    def take_storage_batch(self) -> StorageBatch | None:
        """Return the storage changes collected since the last call, if any."""
        return self._ledger.take()

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
        return queue.send(message, self.persistent, now)

    def purge(self, ident: str) -> list[bytes]:
        """Remove every message waiting for ``ident`` (not those in flight);
        return their uuids.  Storage rows go into the next batch."""
        queue = self._queues.get(ident)
        return [] if queue is None else queue.purge()

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
        session = self._conns[conn_id] = Session(
            self,
            conn_id,
            now,
            max_packet_size=self.max_packet_size,
            cert_idents=None if cert_idents is None else frozenset(cert_idents),
            outbound=outbound,
            hello=self._hello,
            handshake_timeout=self.handshake_timeout,
        )
        if outbound is not True:
            self._unidentified.add(session, now)

    def connection_lost(self, conn_id: str, now: float) -> list[Event]:
        """The socket of ``conn_id`` is closed (by either side)."""
        session = self._conns.pop(conn_id, None)
        if session is None:
            return []
        self._stalls.forget(conn_id)
        self._unidentified.discard(conn_id)
        events: list[Event] = []
        self._detach(session, now, events)
        return events

    def close(self, conn_id: str, error: SnakeMQError | None = None) -> list[Event]:
        """Ask for a connection to be closed (e.g. the application wants it)."""
        session = self._conns.get(conn_id)
        if session is None or session.closed:
            return []
        return session.fail(error) if error is not None else session.closing()

    def wants_write(self, conn_id: str) -> bool:
        """True when ``data_to_send(conn_id)`` would return bytes."""
        session = self._conns.get(conn_id)
        return session is not None and session.wants_write()

    def data_to_send(self, conn_id: str, limit: int = OUTPUT_HIGH_WATER) -> bytes:
        """Return the next bytes to write to ``conn_id`` (``b""`` if none).

        The bytes are the caller's to write, in order, before asking again;
        report progress with ``data_sent()``.  Messages are added while fewer
        than ``limit`` bytes are ready and the peer's window allows.
        """
        session = self._conns.get(conn_id)
        return b"" if session is None else session.data_to_send(limit)

    def data_sent(self, conn_id: str, nbytes: int) -> list[Event]:
        """``nbytes`` more of the bytes from ``data_to_send()`` were written."""
        session = self._conns.get(conn_id)
        if session is None or nbytes <= 0:
            return []
        events = session.data_sent(nbytes)
        since = self._stalls.since
        if since and session.written >= session.emitted:
            # every write started is done: no stall to watch (next_deadline
            # then skips the rule without walking the writes)
            since.pop(conn_id, None)
        return events

    def receive_data(
        self, conn_id: str, data: bytes | bytearray | memoryview, now: float
    ) -> list[Event]:
        """Feed bytes received on ``conn_id``; return what happened.

        ``data`` may be a view of a read buffer the caller reuses once this
        returns: the engine copies what it keeps (message payloads become
        ``bytes`` of their own).
        """
        session = self._conns.get(conn_id)
        if session is None or session.state is _CLOSED:
            return []
        return session.receive_data(data, now)

    def read_moved_deadline(self, conn_id: str) -> bool:
        """After ``receive_data(conn_id)``: whether ``next_deadline()`` may now
        be earlier than it last answered (an answered ping brings the next
        ping forward; a handshake step changes the deadline): an I/O layer
        whose timer sleeps until that answer must wake it.

        False for the common read on an identified connection with no ping
        outstanding: it only moves that connection's keepalive deadline later.
        """
        session = self._conns.get(conn_id)
        if session is None or session.state is not _ACTIVE:
            return True
        deadline = session.next_deadline(self.keepalive_interval, self.keepalive_wait)
        if deadline is None:
            return False
        last = self._last_deadline
        return last is None or deadline < last

    def handed(self, conn_id: str, count: int) -> None:
        """``count`` messages received on ``conn_id`` (in the order of their
        ``MessageReceived`` events) reached the application.

        Call it for every ``MessageReceived``, also after ``connection_lost()``
        of its connection: a resent copy of a message not yet handed is
        acknowledged only once the original is.
        """
        session = self._conns.get(conn_id) or self._closed_rx.get(conn_id)
        if session is None or count <= 0:
            return
        rx = session.rx
        if rx is None:  # a legacy peer: nothing to acknowledge
            return
        unhanded = rx.unhanded()
        if count > unhanded:
            raise LocalProtocolError(
                f"handed({conn_id!r}, {count}) covers more messages than were received "
                f"and not yet handed ({unhanded})"
            )
        ident = session.ident
        assert ident is not None
        rx.handed(count, ident, self._ledger.batch if self.persistent else None)
        session.acks_ready(drained=True)  # handed() drained the window
        if not rx.unhanded():
            self._closed_rx.pop(conn_id, None)
        live = self._by_ident.get(ident)
        if live is not None and live is not session and live.rx is not None:
            # resent copies of what was just handed may be waiting there
            live.acks_ready()

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timeout()`` has work, or ``None``."""
        deadline = self._expiry.next_deadline()
        if self._gone:
            forget = next(iter(self._gone.values())) + self.dedup_linger
            if deadline is None or forget < deadline:
                deadline = forget
        d = earliest_deadline(self._conns.values(), self.keepalive_interval, self.keepalive_wait)
        if d is not None and (deadline is None or d < deadline):
            deadline = d
        stall = self._stalls.next_deadline(self._conns)
        if stall is not None and (deadline is None or stall < deadline):
            deadline = stall
        evict = self._unidentified.due
        if evict is not None and (deadline is None or evict < deadline):
            deadline = evict
        self._last_deadline = deadline
        return deadline

    def handle_timeout(self, now: float) -> list[Event]:
        """Do what is due at ``now``: drop expired messages, ping, close.

        The work is bounded: at most ``EXPIRE_BATCH`` messages are dropped
        per call.  While more are due ``next_deadline()`` stays at or before
        ``now``, so an I/O loop serves its sockets and calls again at once."""
        events: list[Event] = []
        if self._unidentified.due is not None:
            events.extend(self._unidentified.take_closes())
        self._expiry.expire(now, events)
        if self._gone:
            self._forget_gone(now)
        interval = self.keepalive_interval
        wait = self.keepalive_wait
        timeout = self.handshake_timeout
        for session in list(self._conns.values()):
            session.handle_timeout(now, interval, wait, timeout, events)
        for session, error in self._stalls.stalled(now, self._conns):
            events.extend(session.fail(error))
        return events

    @property
    def write_stall_timeout(self) -> float | None:
        """Seconds a write may take before its connection is closed
        (``SlowReaderError``); ``None``: never.  May be changed at any time."""
        return self._stalls.timeout

    @write_stall_timeout.setter
    def write_stall_timeout(self, value: float | None) -> None:
        if value is not None:
            _check_seconds(value, "write_stall_timeout")
        self._stalls.timeout = None if value is None else float(value)

    def writing(self, conn_id: str, now: float) -> bool:
        """The I/O layer starts, at ``now``, writing the bytes the last
        ``data_to_send(conn_id)`` returned (call it after every call that
        returned bytes).  If ``data_sent()`` has not reported them all
        ``write_stall_timeout`` seconds later, ``handle_timeout()`` closes the
        connection with ``SlowReaderError`` (see ``_stall``).

        Returns True when this moved ``next_deadline()`` earlier than it
        last answered: an I/O layer whose timer sleeps until that answer
        must wake it."""
        session = self._conns.get(conn_id)
        timeout = self._stalls.timeout
        if session is None or timeout is None:
            return False
        self._stalls.started(conn_id, session, now)
        last = self._last_deadline
        return last is None or now + timeout < last

    # ------------------------------------------------------ routing (Router)

    def _admit(self, session: Session, ident: str, now: float, events: list[Event]) -> bool:
        """Let ``session`` carry ``ident``: refuse a duplicate, or, for crossed
        dials, keep the same one of the two connections as the peer does.

        A connection we dialled is never replaced on a stranger's word: a
        newcomer that dialled us waits (False: AWAIT_TAKEOVER) until the
        peer closes its end of ours, which the real peer does when it
        resolves the crossed dials and a stranger cannot.  A snakeMQ 1.6
        newcomer never does, so it is refused while ours lives."""
        other = self._by_ident.get(ident)
        if other is None:
            return True
        if not self._replaces(session, other, ident):
            if session.outbound:
                # our own dial is the redundant one: its connector waits
                events.append(RedialHeld(session.conn_id, ident))
                duplicate = DuplicateIdentError(
                    f"peer {ident!r} is already connected over {other.conn_id}; this "
                    "dialled connection is closed and its connector waits until that "
                    "one ends"
                )
            else:
                duplicate = DuplicateIdentError(f"peer {ident!r} is already connected")
            both_known = session.outbound is not None and other.outbound is not None
            duplicate.crossed = both_known and session.outbound != other.outbound
            raise duplicate
        if not session.outbound:
            if session.remote_caps is None:
                raise DuplicateIdentError(
                    f"peer {ident!r} is already connected over {other.conn_id}, which we "
                    "dialled; a snakeMQ 1.6 peer cannot resolve crossed dials, so this "
                    "connection is refused while that one lives"
                )
            if other.challenger is not None:
                raise DuplicateIdentError(
                    f"peer {ident!r} is already connected, and another connection waits "
                    "to take over"
                )
            log.info(
                "conn=%s ident=%r: crossed dial, waiting for the peer to close %s",
                session.conn_id,
                ident,
                other.conn_id,
            )
            other.challenger = session
            return False
        # the two peers dialled each other and this is our dial: keep it
        log.info(
            "conn=%s ident=%r: keeping this one of two crossed connections",
            session.conn_id,
            ident,
        )
        del self._conns[other.conn_id]
        self._detach(other, now, events)
        if other.outbound:
            events.append(RedialHeld(other.conn_id, ident))
        events.append(CloseConnection(other.conn_id))
        return True

    def _attach(
        self, session: Session, ident: str, now: float, events: list[Event]
    ) -> tuple[PeerQueue, ReceiveWindow | None]:
        """``session`` carries ``ident`` from now on: the peer's queue is
        connected, its messages are sent afresh."""
        self._unidentified.discard(session.conn_id)
        queue = self._queue(ident)
        queue.connect(now, events)
        self._by_ident[ident] = session
        self._gone.pop(ident, None)
        rx = None if session.legacy else ReceiveWindow(self._window(ident), self.window)
        events.append(PeerConnected(session.conn_id, ident, session.legacy))
        return queue, rx

    def _replaces(self, new: Session, old: Session, ident: str) -> bool:
        """Whether ``new`` wins over ``old`` (both to ``ident``): only crossed
        dials do, and the one dialled by the smaller identifier is kept."""
        if new.outbound is None or old.outbound is None or new.outbound == old.outbound:
            return False
        return new.outbound == (self.ident < ident)

    def _detach(self, session: Session, now: float, events: list[Event]) -> None:
        claimed = session.claimed
        if claimed is not None:  # it was waiting to take over: no longer
            holder = self._by_ident.get(claimed)
            if holder is not None and holder.challenger is session:
                holder.challenger = None
        session.detach()
        rx = session.rx
        if rx is not None and rx.unhanded():
            self._closed_rx[session.conn_id] = session
        queue = session.queue
        ident = session.ident
        if queue is not None and ident is not None:
            del self._by_ident[ident]
            queue.disconnect(now, events)
            events.append(PeerDisconnected(session.conn_id, ident))
            challenger, session.challenger = session.challenger, None
            if challenger is not None and self._conns.get(challenger.conn_id) is challenger:
                events.extend(challenger.take_over(now))
            if ident in self._windows:
                self._gone.pop(ident, None)
                self._gone[ident] = now  # (the newest last)
            self._forget(ident)

    def _forget(self, ident: str) -> None:
        """Drop the state kept for ``ident`` once nothing depends on it: not
        connected, nothing queued, no de-duplication entry (seen or pending).
        A program that talks to many short-lived peers does not grow."""
        if ident in self._by_ident:
            return
        queue = self._queues.get(ident)
        if queue is not None and (queue.items or queue.disk is not None):
            return
        window = self._windows.get(ident)
        if window is not None and (window.seen or window.pending):
            return
        self._queues.pop(ident, None)
        self._windows.pop(ident, None)
        self._gone.pop(ident, None)

    def _forget_gone(self, now: float) -> None:
        """Forget the de-duplication windows of peers gone ``dedup_linger``
        ago (at most ``FORGET_BATCH``; ``next_deadline()`` stays due while
        more are).  A window still waiting for ``handed()`` is kept for
        another ``dedup_linger``."""
        gone = self._gone
        due = now - self.dedup_linger
        forgotten = 0
        for _ in range(FORGET_BATCH):
            if not gone:
                break
            ident, since = next(iter(gone.items()))
            if since > due:
                break
            del gone[ident]
            window = self._windows.get(ident)
            if window is None or ident in self._by_ident:
                continue
            if window.pending:
                gone[ident] = now
                continue
            del self._windows[ident]
            self._forget(ident)
            forgotten += 1
        if forgotten and len(self._windows) <= forgotten:
            # dicts keep their tables when emptied: give the memory back
            self._windows = dict(self._windows)
            self._queues = dict(self._queues)
            self._gone = dict(gone)

    def _queue(self, ident: str) -> PeerQueue:
        queue = self._queues.get(ident)
        if queue is None:
            queue = self._queues[ident] = PeerQueue(ident, self._ledger, self._expiry)
        return queue

    def _window(self, ident: str) -> PeerWindow:
        window = self._windows.get(ident)
        if window is None:
            window = self._windows[ident] = PeerWindow(self.dedup_window)
        return window
