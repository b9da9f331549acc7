"""One connection: its state machine, its output stream and its keepalive.

Theory of operation
-------------------

A ``Session`` exists from ``Engine.connection_made()`` to
``connection_lost()``.  Its life is one table, ``_TRANSITIONS``, in the h11
manner: ``(state, frame type) -> (handler, next state)``::

    AWAIT_VERSION --PROTOCOL_VERSION--> AWAIT_IDENT --IDENTIFICATION--> ACTIVE
                                         (CAPABILITIES allowed here, once;
                                          PING and PONG too)
    ACTIVE: MESSAGE, ACK, PING, PONG        (stay ACTIVE)
    AWAIT_IDENT --IDENTIFICATION, crossed dial--> AWAIT_TAKEOVER
        --the connection it contends with is closed--> ACTIVE
    any state --error / INCOMPATIBLE_PROTOCOL / timeout / close--> CLOSED

AWAIT_TAKEOVER (no entries in the table: its packets are held, at most
``HELD_MAX`` bytes, and acted on once it is ACTIVE): a connection someone
dialled to us under the identifier of a peer *we* dialled and are connected
to, which the crossed-dial rule would keep.  The real peer resolves crossed
dials the same way, so it closes its end of our dial; a stranger cannot.
So the newcomer takes over only once our dial is closed, and is refused when
the handshake deadline passes first (``Engine._admit``).

The receive loop looks the pair up, runs the handler and enters the next
state; handlers never assign a state.  A handler that refuses its frame
raises a ``RemoteProtocolError``, which closes the session (``fail()``).
CLOSED is entered in two places only: ``closing()`` (an error, a timeout or
the application; ``CloseConnection`` asks the I/O layer to close the socket)
and ``detach()`` (the socket is gone).  A frame type with no
entry for the current state is an ``UnexpectedFrameError``; a frame type
this version does not know is ignored (that is how 1.6 treats ours).

Handlers take the packet list and the index of their packet and return the
index of the next one, so that the MESSAGE handler, the hot path, handles a
whole run of MESSAGE packets per lookup.  The other handlers get their frame
decoded (``_one_frame``).

Identification is the one step that concerns more than this connection
(duplicates, crossed dials, the peer's queue): the session checks what it
can alone, then asks its ``Router`` (the engine) to ``_admit`` the identifier
and ``_attach`` the peer's queue and receive window.

Output: ``out`` holds encoded packets not yet returned by ``data_to_send()``;
the peer's queue encodes messages onto it, and ``sent_marks`` records the
stream position at which each message's packet ends, so that ``data_sent()``
can tell which messages were completely written.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from ._errors import (
    DuplicateIdentError,
    HandshakeTimeoutError,
    IdentityMismatchError,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
    LocalProtocolError,
    MalformedFrameError,
    PacketTooLargeError,
    RemoteProtocolError,
    SlowReaderError,
    SnakeMQError,
    UnexpectedFrameError,
)
from ._events import (
    CloseConnection,
    ErrorOccurred,
    Event,
    MessageSent,
    _new,
    _received,
    _sent_conn,
    _sent_ident,
    _sent_settled,
    _sent_uuid,
)
from ._queue import PeerQueue, _Item
from ._window import ReceiveWindow
from ._wire import (
    CAP_ACK,
    FRAME_ACK,
    FRAME_CAPABILITIES,
    FRAME_IDENTIFICATION,
    FRAME_INCOMPATIBLE_PROTOCOL,
    FRAME_MESSAGE,
    FRAME_PING,
    FRAME_PONG,
    FRAME_PROTOCOL_VERSION,
    KNOWN_FRAME_TYPES,
    PROTOCOL_VERSION,
    Capabilities,
    Frame,
    Identification,
    IncompatibleProtocol,
    PacketDecoder,
    Ping,
    Pong,
    ProtocolVersion,
    decode_ack,
    decode_frame,
    decode_messages,
    encode_packet,
)

log = logging.getLogger("snakemq.engine")

_PING_PACKET = encode_packet(Ping().encode())
_PONG_PACKET = encode_packet(Pong().encode())
_INCOMPATIBLE_PACKET = encode_packet(IncompatibleProtocol().encode())


HELD_MAX = 1024 * 1024
"""Bytes a connection in AWAIT_TAKEOVER may send before it is refused."""

HANDSHAKE_MAX_PACKET = 256
"""The largest packet accepted before identification: the handshake's own
frames need at most 201 bytes (IDENTIFICATION: 50 characters of UTF-8)."""

CONTROL_OUT_MAX = 256 * 1024
"""Bytes of our answers (PONGs, ACKs) that may wait to be written before a
peer that keeps asking but never reads is closed."""


class ConnState(enum.Enum):
    """Where a connection is in its life (see the table ``_TRANSITIONS``)."""

    AWAIT_VERSION = "await-version"
    AWAIT_IDENT = "await-ident"
    AWAIT_TAKEOVER = "await-takeover"
    ACTIVE = "active"
    CLOSED = "closed"

    # members are singletons compared by identity: hash them by identity too,
    # in C (Enum's own __hash__ is a Python call per packet's table lookup)
    __hash__ = object.__hash__


# The members the hot paths compare with, as module constants: ``ConnState.X``
# goes through EnumType's ``__getattr__`` slot, several times slower than a
# global in CPython 3.11, and sessions ask per packet.
_ACTIVE = ConnState.ACTIVE
_CLOSED = ConnState.CLOSED
_AWAIT_TAKEOVER = ConnState.AWAIT_TAKEOVER


class Router(Protocol):
    """What a session needs of its engine."""

    ident: str
    legacy: bool
    report_sent: bool
    report_delivered: bool
    unidentified_budget: int
    unidentified_used: int

    def _admit(self, session: Session, ident: str, now: float, events: list[Event]) -> bool:
        """Let ``session`` carry ``ident`` (closing a crossed twin): True;
        False when it must wait for the twin to close (AWAIT_TAKEOVER); or
        raise ``DuplicateIdentError``."""

    def _attach(
        self, session: Session, ident: str, now: float, events: list[Event]
    ) -> tuple[PeerQueue, ReceiveWindow | None]:
        """``session`` now carries ``ident``: connect its queue, report it."""


class Session:
    """One connection's state, output and keepalive (see the module doc)."""

    __slots__ = (
        "budget_used",
        "cert_idents",
        "challenger",
        "claimed",
        "conn_id",
        "deadline_handshake",
        "decoder",
        "emitted",
        "held",
        "held_bytes",
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
        "router",
        "rx",
        "sent_marks",
        "state",
        "written",
    )

    def __init__(
        self,
        router: Router,
        conn_id: str,
        now: float,
        *,
        max_packet_size: int,
        cert_idents: frozenset[str] | None,
        outbound: bool | None,
        hello: bytes,
        handshake_timeout: float,
    ) -> None:
        self.router = router
        self.conn_id = conn_id
        self.state = ConnState.AWAIT_VERSION
        self.decoder = PacketDecoder(max_packet_size)
        self.ident: str | None = None
        self.cert_idents = cert_idents
        self.outbound = outbound
        self.legacy = True  # until a CAPABILITIES frame with CAP_ACK says otherwise
        self.remote_caps: Capabilities | None = None
        self.remote_window = 0
        self.queue: PeerQueue | None = None  # the peer's, once identified
        self.rx: ReceiveWindow | None = None  # capable peers only, once identified
        self.last_recv = now
        self.ping_sent: float | None = None
        self.deadline_handshake = now + handshake_timeout
        # output: encoded packets not yet returned by data_to_send()
        self.out: list[bytes] = [hello]
        self.out_bytes = len(hello)
        self.emitted = 0  # bytes returned by data_to_send() so far
        self.written = 0  # bytes reported by data_sent() so far
        self.sent_marks: deque[tuple[int, _Item]] = deque()  # (end offset, item)
        # AWAIT_TAKEOVER: the identifier it waits to carry, its held packets
        self.claimed: str | None = None
        self.held: list[memoryview] = []
        self.held_bytes = 0
        self.challenger: Session | None = None  # the session waiting for this one to close
        self.budget_used = 0  # bytes counted in the router's budget of unidentified sessions

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    # ------------------------------------------------------------- closing

    def closing(self) -> list[Event]:
        """Enter CLOSED and ask the I/O layer to close the socket."""
        self.state = _CLOSED
        return [CloseConnection(self.conn_id)]

    def fail(self, error: SnakeMQError) -> list[Event]:
        """Report ``error`` and close (nothing if already closed)."""
        if self.state is _CLOSED:
            return []
        routine = isinstance(error, DuplicateIdentError) and error.crossed
        log.log(
            logging.INFO if routine else logging.WARNING,
            "conn=%s ident=%r closing: %s",
            self.conn_id,
            self.ident,
            error,
        )
        return [ErrorOccurred(self.conn_id, self.ident, error), *self.closing()]

    def detach(self) -> None:
        """The socket is gone (or the engine dropped this session): CLOSED,
        and nothing more to write."""
        self.state = _CLOSED
        self.out.clear()
        self.out_bytes = 0
        self.sent_marks.clear()
        self.claimed, self.held, self.held_bytes = None, [], 0
        self.release_budget()

    # -------------------------------------------------------------- output

    def _out(self, packet: bytes) -> None:
        self.out.append(packet)
        self.out_bytes += len(packet)

    def wants_write(self) -> bool:
        """True when ``data_to_send()`` would return bytes."""
        if self.out_bytes:
            return True
        queue = self.queue
        if queue is None or self.state is not _ACTIVE:
            return False
        return queue.sendable(None if self.legacy else self.remote_window)

    def data_to_send(self, limit: int) -> bytes:
        """The next bytes to write; messages are added while fewer than
        ``limit`` bytes are ready and the peer's window allows."""
        out = self.out
        queue = self.queue
        if queue is not None and self.state is _ACTIVE:
            self.out_bytes = queue.encode(
                out,
                self.sent_marks,
                self.emitted,
                self.out_bytes,
                limit,
                None if self.legacy else self.remote_window,
            )
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.emitted += self.out_bytes
        self.out_bytes = 0
        return data

    def data_sent(self, nbytes: int) -> list[Event]:
        """``nbytes`` more of the bytes from ``data_to_send()`` were written."""
        self.written += nbytes
        written = self.written
        if written > self.emitted:
            raise LocalProtocolError(
                f"data_sent() reports {written} bytes written on {self.conn_id!r}, "
                f"but data_to_send() returned only {self.emitted}"
            )
        marks = self.sent_marks
        if not marks or marks[0][0] > written:
            return []
        events: list[Event] = []
        conn_id = self.conn_id
        ident = self.ident
        queue = self.queue
        assert ident is not None and queue is not None
        report = self.router.report_sent
        # the legacy settlement rule: towards a 1.6 peer a message leaves its
        # queue once completely written, and its MessageSent says so
        legacy = self.legacy
        settled = 0
        append = events.append
        while marks and marks[0][0] <= written:
            _, item = marks.popleft()
            if item.reported:  # already reported when it was acknowledged
                continue
            if report:  # _sent(), inline: one event per message written
                event: MessageSent = _new(MessageSent)
                _sent_conn(event, conn_id)
                _sent_ident(event, ident)
                _sent_uuid(event, item.message.uuid)
                _sent_settled(event, legacy)
                append(event)
            settled += 1
        if legacy and settled:
            queue.settle_written(settled)
        return events

    # ------------------------------------------------------------- receive

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed received bytes (the session is not CLOSED); return the news."""
        self.last_recv = now
        self.ping_sent = None
        events: list[Event] = []
        try:
            self._process(self.decoder.feed(data), now, events)
            if self.decoder.pending_error:
                self.decoder.feed(b"")  # raises PacketTooLargeError
            if self.state is not _ACTIVE and self.state is not _CLOSED:
                self._charge_unidentified()
        except RemoteProtocolError as exc:
            events.extend(self.fail(exc))
        rx = self.rx
        if rx is not None and rx.ack_count and self.state is _ACTIVE:
            self._out(rx.take_ack())
        return events

    def _process(self, packets: list[memoryview], now: float, events: list[Event]) -> None:
        """Act on received packets in order (raises ``RemoteProtocolError``)."""
        count = len(packets)
        i = 0
        while i < count:
            if self.state is _AWAIT_TAKEOVER:
                self._hold(packets, i)
                return
            packet = packets[i]
            if len(packet) == 0:
                raise MalformedFrameError(
                    "empty packet: a packet must hold at least a frame type byte"
                )
            if len(packet) > HANDSHAKE_MAX_PACKET and self.state is not _ACTIVE:
                if packet[0] == FRAME_IDENTIFICATION:
                    raise MalformedFrameError(
                        f"IDENTIFICATION frame of {len(packet)} bytes: an identifier is at "
                        "most 50 characters"
                    )
                raise PacketTooLargeError(
                    f"peer sent a packet of {len(packet)} bytes before it identified; only "
                    f"the handshake's frames (at most {HANDSHAKE_MAX_PACKET} bytes) are allowed"
                )
            ftype = packet[0]
            transition = _TRANSITIONS.get((self.state, ftype))
            if transition is None:
                if ftype in KNOWN_FRAME_TYPES:
                    raise UnexpectedFrameError(
                        f"frame type {ftype} is not allowed in state {self.state.value}"
                    )
                i += 1
                continue  # unknown frame types are ignored (the extension door)
            handler, next_state = transition
            i = handler(self, packets, i, now, events)
            # an identification that must wait for its crossed twin to close
            self.state = next_state if self.claimed is None else _AWAIT_TAKEOVER

    def _charge_unidentified(self) -> None:
        """Bound what an unidentified session makes us keep: a partial packet
        of a handshake frame's size (or HELD_MAX while awaiting a takeover),
        and all of them together the router's ``unidentified_budget``."""
        buffered = self.decoder.buffered
        if self.state is _AWAIT_TAKEOVER:
            if buffered + self.held_bytes > HELD_MAX:
                raise PacketTooLargeError(
                    f"peer {self.claimed!r} is already connected over a connection we dialled; "
                    f"this one sent more than {HELD_MAX} bytes before that one was closed"
                )
        elif buffered > HANDSHAKE_MAX_PACKET:
            raise PacketTooLargeError(
                f"peer sent a packet of more than {HANDSHAKE_MAX_PACKET} bytes before it "
                "identified; only the handshake's frames are allowed then"
            )
        used = buffered + self.held_bytes
        router = self.router
        router.unidentified_used += used - self.budget_used
        self.budget_used = used
        if router.unidentified_used > router.unidentified_budget:
            raise PacketTooLargeError(
                f"connections that have not identified hold {router.unidentified_used} bytes, "
                f"more than the budget of {router.unidentified_budget}; this one is closed"
            )

    def release_budget(self) -> None:
        """Identified or gone: no longer counted as unidentified."""
        self.router.unidentified_used -= self.budget_used
        self.budget_used = 0

    def _hold(self, packets: list[memoryview], start: int) -> None:
        held = self.held
        for i in range(start, len(packets)):
            packet = memoryview(bytes(packets[i]))  # the decoder reuses its buffer
            self.held_bytes += len(packet)
            held.append(packet)
        if self.held_bytes > HELD_MAX:
            raise DuplicateIdentError(
                f"peer {self.claimed!r} is already connected over a connection we dialled; "
                f"this one sent more than {HELD_MAX} bytes before that one was closed"
            )

    def take_over(self, now: float) -> list[Event]:
        """AWAIT_TAKEOVER ends: the connection this one contended with is
        closed.  This one carries the identifier and its held packets are
        acted on."""
        ident, held = self.claimed, self.held
        assert ident is not None and self.state is _AWAIT_TAKEOVER
        self.claimed, self.held, self.held_bytes = None, [], 0
        self.state = _ACTIVE
        events: list[Event] = []
        self._identified(ident, now, events)
        try:
            self._process(held, now, events)
        except RemoteProtocolError as exc:
            events.extend(self.fail(exc))
        rx = self.rx
        if rx is not None and rx.ack_count and self.state is _ACTIVE:
            self._out(rx.take_ack())
        return events

    def acks_ready(self, drained: bool = False) -> None:
        """The receive window may acknowledge more: send the ACK now
        (``drained``: the caller just drained the window)."""
        rx = self.rx
        assert rx is not None
        if not drained:
            rx.drain()
        if rx.ack_count and self.state is _ACTIVE:
            self._out(rx.take_ack())

    # -------------------------------------------------------------- timers

    def next_deadline(self, interval: float | None, wait: float) -> float | None:
        """When ``handle_timeout()`` has work: the handshake deadline, the
        next ping (``interval`` of silence), or the pong's (``wait``)."""
        return earliest_deadline((self,), interval, wait)

    def handle_timeout(
        self,
        now: float,
        interval: float | None,
        wait: float,
        handshake_timeout: float,
        events: list[Event],
    ) -> None:
        """Fail an unidentified session past its deadline, ping a silent
        one, fail one that did not answer the ping in time."""
        state = self.state
        if state is _CLOSED:
            return
        if state is not _ACTIVE:
            if now >= self.deadline_handshake:
                error: SnakeMQError = HandshakeTimeoutError(
                    f"peer did not identify within {handshake_timeout} s"
                )
                if state is _AWAIT_TAKEOVER:
                    error = DuplicateIdentError(
                        f"peer {self.claimed!r} is already connected over a connection we "
                        "dialled, and this one did not prove to come from the same peer: that "
                        f"one was not closed within {handshake_timeout} s"
                    )
                events.extend(self.fail(error))
            return
        if interval is None:
            return
        if self.ping_sent is None:
            if now - self.last_recv >= interval:
                self.ping_sent = now
                self._out(_PING_PACKET)
        elif now - self.ping_sent >= wait:
            events.extend(
                self.fail(KeepaliveTimeoutError(f"no answer to a keepalive ping within {wait} s"))
            )

    # ------------------------------------------------------ frame handlers
    # a run handler: (session, packets, index, now, events) -> next index;
    # a frame handler: (session, frame, now, events), adapted by _one_frame

    def _on_messages(
        self, packets: list[memoryview], i: int, now: float, events: list[Event]
    ) -> int:
        """The hot path: the run of MESSAGE packets that starts at ``i``."""
        messages = decode_messages(packets, i)
        ident = self.ident
        assert ident is not None
        rx = self.rx
        if rx is None:
            conn_id = self.conn_id
            append = events.append
            for message in messages:
                append(_received(conn_id, ident, message))
        else:
            rx.receive(messages, self.conn_id, ident, events)
        return i + len(messages)

    def _on_version(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        assert isinstance(frame, ProtocolVersion)
        if frame.version != PROTOCOL_VERSION:
            self._out(_INCOMPATIBLE_PACKET)
            raise IncompatibleProtocolError(
                f"remote peer speaks protocol version {frame.version}, we speak {PROTOCOL_VERSION}"
            )

    def _on_incompatible(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        raise IncompatibleProtocolError(
            f"remote peer refused our protocol version {PROTOCOL_VERSION}"
        )

    def _on_capabilities(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        assert isinstance(frame, Capabilities)
        if self.remote_caps is not None:
            raise UnexpectedFrameError("CAPABILITIES sent twice")
        self.remote_caps = frame

    def _on_identification(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        assert isinstance(frame, Identification)
        ident = frame.ident
        router = self.router
        if ident == router.ident:
            raise DuplicateIdentError(
                f"remote peer identified as {ident!r}, which is this peer's own identifier"
            )
        if self.cert_idents is not None and ident not in self.cert_idents:
            names = ", ".join(repr(n) for n in sorted(self.cert_idents)) or "no names"
            raise IdentityMismatchError(
                f"remote peer identified as {ident!r} but its certificate names {names}"
            )
        if not router._admit(self, ident, now, events):
            self.claimed = ident  # AWAIT_TAKEOVER
            return
        self._identified(ident, now, events)

    def _identified(self, ident: str, now: float, events: list[Event]) -> None:
        router = self.router
        self.release_budget()
        caps = self.remote_caps
        self.legacy = router.legacy or caps is None or not caps.bits & CAP_ACK
        if caps is not None and not self.legacy:
            self.remote_window = caps.window
        self.ident = ident
        self.queue, self.rx = router._attach(self, ident, now, events)

    def _on_ping(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        if self.out_bytes >= CONTROL_OUT_MAX:
            raise SlowReaderError(
                f"peer keeps pinging but does not read: {self.out_bytes} bytes of answers "
                "wait to be written"
            )
        self._out(_PONG_PACKET)

    def _on_pong(self, frame: Frame | None, now: float, events: list[Event]) -> None:
        pass

    def _on_ack(self, packets: list[memoryview], i: int, now: float, events: list[Event]) -> int:
        """An ACK (a run handler: decoded without an ``Ack`` object, hot path)."""
        count, last_uuid = decode_ack(packets[i])
        if self.legacy:
            raise UnexpectedFrameError("ACK from a peer that did not announce acknowledgements")
        queue = self.queue
        assert queue is not None
        router = self.router
        queue.acknowledge(
            count,
            last_uuid,
            self.sent_marks,
            self.conn_id,
            events,
            router.report_sent,
            router.report_delivered,
        )
        return i + 1


_RunHandler = Callable[[Session, list[memoryview], int, float, list[Event]], int]
_FrameHandler = Callable[[Session, "Frame | None", float, list[Event]], None]


def earliest_deadline(
    sessions: Iterable[Session], interval: float | None, wait: float
) -> float | None:
    """The earliest ``Session.next_deadline(interval, wait)`` of
    ``sessions``, or ``None`` (the rule lives here only).

    One loop with no call per session: the engine asks over every
    connection at each pass of an I/O loop (400 sessions: ~40 us, against
    ~270 us calling ``next_deadline()`` on each).
    """
    active = _ACTIVE
    closed = _CLOSED
    deadline: float | None = None
    for session in sessions:
        state = session.state
        if state is active:
            if interval is None:
                continue
            ping_sent = session.ping_sent
            d = session.last_recv + interval if ping_sent is None else ping_sent + wait
        elif state is closed:
            continue
        else:
            d = session.deadline_handshake
        if deadline is None or d < deadline:
            deadline = d
    return deadline


def _one_frame(handler: _FrameHandler) -> _RunHandler:
    """Adapt a handler of one decoded frame to the table's run signature."""

    def run(
        session: Session, packets: list[memoryview], i: int, now: float, ev: list[Event]
    ) -> int:
        handler(session, decode_frame(packets[i]), now, ev)
        return i + 1

    return run


_S = ConnState
_TRANSITIONS: dict[tuple[ConnState, int], tuple[_RunHandler, ConnState]] = {
    (_S.AWAIT_VERSION, FRAME_PROTOCOL_VERSION): (_one_frame(Session._on_version), _S.AWAIT_IDENT),
    (_S.AWAIT_VERSION, FRAME_INCOMPATIBLE_PROTOCOL): (
        _one_frame(Session._on_incompatible),
        _S.CLOSED,
    ),
    (_S.AWAIT_IDENT, FRAME_CAPABILITIES): (_one_frame(Session._on_capabilities), _S.AWAIT_IDENT),
    (_S.AWAIT_IDENT, FRAME_IDENTIFICATION): (_one_frame(Session._on_identification), _S.ACTIVE),
    (_S.AWAIT_IDENT, FRAME_PING): (_one_frame(Session._on_ping), _S.AWAIT_IDENT),
    (_S.AWAIT_IDENT, FRAME_PONG): (_one_frame(Session._on_pong), _S.AWAIT_IDENT),
    (_S.AWAIT_IDENT, FRAME_INCOMPATIBLE_PROTOCOL): (
        _one_frame(Session._on_incompatible),
        _S.CLOSED,
    ),
    (_S.ACTIVE, FRAME_MESSAGE): (Session._on_messages, _S.ACTIVE),
    (_S.ACTIVE, FRAME_ACK): (Session._on_ack, _S.ACTIVE),
    (_S.ACTIVE, FRAME_PING): (_one_frame(Session._on_ping), _S.ACTIVE),
    (_S.ACTIVE, FRAME_PONG): (_one_frame(Session._on_pong), _S.ACTIVE),
    (_S.ACTIVE, FRAME_INCOMPATIBLE_PROTOCOL): (_one_frame(Session._on_incompatible), _S.CLOSED),
}
"""Every allowed (state, frame type), its handler and the state it leads to;
anything else known is a protocol error.  The INCOMPATIBLE_PROTOCOL handler
always raises: its CLOSED is reached through ``fail()``."""
