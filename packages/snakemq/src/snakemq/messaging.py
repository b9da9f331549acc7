"""``Messaging``: identified peers exchanging queued messages.

Theory of operation
-------------------

All protocol rules live in one ``snakemq_proto.Engine``; this class moves
bytes between the engine and the link, runs its timers and calls the user's
callbacks.  It takes over the raw byte stream of every connection from the
packeter (``Packeter.set_stream_handler``), so one ``recv`` of up to
``Link.recv_block_size`` (1 MiB) goes to ``engine.receive_data`` at once and one ``engine.data_to_send()``
batch goes out with one ``send``.

Threads: ``send_message`` may be called from any thread.  Every engine call
happens under ``self._lock``; user callbacks are called *without* the lock,
so a callback may call ``send_message`` (or block on another thread that
does) without deadlock.

Storage: every batch of storage changes the engine produces goes through
one ``snakemq_proto.StorageWriter`` (order, carry and retry after a failure,
one log line per failure streak), called inline under the lock.
``send_message`` applies the pending changes before it returns (a persistent
message is durable then); changes produced by the loop are grouped and
applied once per pass, and always before new bytes are written, so a peer
never learns of something not yet on disk.

Redials: ``RedialHeld`` holds the link's connector in a
``snakemq_proto.RedialHolds`` until that peer disconnects; ``PeerConnected``
tells the link (``identified``) so the connector's back-off starts over.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from snakemq_proto import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WAIT,
    DEFAULT_MAX_PACKET_SIZE,
    DEFAULT_MAX_UNIDENTIFIED,
    DEFAULT_WINDOW,
    DEFAULT_WRITE_STALL_TIMEOUT,
    FLAG_PERSISTENT,
    CloseConnection,
    Engine,
    ErrorOccurred,
    Event,
    FillRequest,
    Lease,
    LeaseWatch,
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
    RedialHolds,
    StorageError,
    StorageWriter,
    WindowedStorage,
    cert_idents,
    check_seconds,
    lease_watch,
    load_state,
    open_storage,
    standby,
    take_over_attempt,
)

from .callbacks import Callback
from .exceptions import NoConnection
from .packeter import Packeter

__all__ = ["Messaging", "ReceiveHook"]

log = logging.getLogger("snakemq.messaging")


class _Out:
    """Output state of one connection."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf: memoryview | None = None  # handed to the link, not yet reported written


class Messaging:
    """A peer named ``identifier`` exchanging messages over ``packeter``.

    Args:
        identifier: this peer's identifier (1-50 characters).
        domain: unused (kept for snakeMQ 1.6 compatibility).
        packeter: the ``Packeter`` whose connections carry the messages.
        queues_storage: where persistent messages wait (``None``: memory only);
            a snakeMQ 1.6 style storage is adapted.  With a storage shared
            by processes (``SqlAlchemyQueuesStorage`` on PostgreSQL) this
            peer is a *standby* while another process serves
            ``identifier``: its link neither listens nor dials, and it
            takes over (loads the queues and de-dup window) once it holds
            the lease.
        max_packet_size: the largest packet accepted from a peer.
        handshake_timeout: seconds a new connection may take to identify.
        window: unacknowledged messages a capable peer may send us in a row.
        max_queued: while a peer is connected and this many messages wait
            for it, ``send_message`` from a thread other than the loop's
            blocks until half of them are gone (backpressure; the loop's own
            thread never blocks).  ``None`` turns it off.
        legacy: speak exactly as snakeMQ 1.6 (no acknowledgements); for tests.
        write_stall_timeout: seconds one write to a peer (one buffer of at
            most 512 KiB plus one message) may wait for the peer to take it;
            past that the peer is not reading and the connection is closed
            (``on_error`` with ``SlowReaderError``).  ``None`` never closes.
        max_unidentified: accepted connections that may await identification
            at once (512); a new one beyond that closes the oldest, with one
            warning per streak (logger ``snakemq.engine``).

    Callbacks:
        on_connect(conn_id, ident), on_disconnect(conn_id, ident)
        on_message_recv(conn_id, ident, message)
        on_message_sent(conn_id, ident, uuid): completely written to the socket.
        on_message_delivered(ident, uuid): acknowledged by the receiver, gone
            from queue and storage (capable peers only).
        on_message_settled(ident, uuid): done with, gone from queue and
            storage: acknowledged by a capable peer (after
            ``on_message_delivered``) or completely written to a snakeMQ 1.6
            peer, which acknowledges nothing (after ``on_message_sent``).
            The moment an ``snakemq_anyio`` receipt resolves.
        on_message_drop(ident, uuid): its TTL ran out; it is gone.
        on_error(conn_id, exception): the peer broke the protocol (or a
            callback raised); the connection is closed in the first case.

    Raises:
        TypeError, ValueError: a bad identifier or option.
    """

    def __init__(
        self,
        identifier: str,
        domain: str,
        packeter: Packeter,
        queues_storage: QueuesStorage | LegacyQueuesStorage | None = None,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        max_queued: int | None = 2 * DEFAULT_WINDOW,
        legacy: bool = False,
        write_stall_timeout: float | None = DEFAULT_WRITE_STALL_TIMEOUT,
        max_unidentified: int = DEFAULT_MAX_UNIDENTIFIED,
    ) -> None:
        self._engine = Engine(
            identifier,
            persistent=queues_storage is not None,
            keepalive_interval=DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_wait=DEFAULT_KEEPALIVE_WAIT,
            handshake_timeout=handshake_timeout,
            max_packet_size=max_packet_size,
            window=window,
            max_queued=max_queued,
            legacy=legacy,
            write_stall_timeout=write_stall_timeout,
            max_unidentified=max_unidentified,
        )
        self.identifier = identifier
        self.domain = domain
        self.packeter = packeter
        self.link = packeter.link
        if queues_storage is not None:
            queues_storage = open_storage(queues_storage, identifier)
        self.storage = queues_storage
        self._persistent_check = PersistentWithoutStorage(
            identifier, queues_storage is not None, log
        )
        self._standby = standby(queues_storage)

        self.on_connect: Callback[[str, str]] = Callback()
        self.on_disconnect: Callback[[str, str]] = Callback()
        self.on_message_recv: Callback[[str, str, Message]] = Callback()
        self.on_message_sent: Callback[[str, str, bytes]] = Callback()
        self.on_message_delivered: Callback[[str, bytes]] = Callback()
        self.on_message_settled: Callback[[str, bytes]] = Callback()
        self.on_message_drop: Callback[[str, bytes]] = Callback()
        self.on_error: Callback[[str, Exception]] = Callback()

        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # producers waiting for queue space
        self._waiting = 0
        self._loop_thread: int | None = None
        self._outs: dict[str, _Out] = {}
        self._held: RedialHolds[Any] = RedialHolds()  # connector addresses, by peer
        self._dirty = False  # send_message queued something: flush in the next pass
        self._flush_wanted: set[str] = set()  # connections with new output this pass
        self._deferred: list[Event] = []  # events to dispatch from the loop thread
        self._writer = None if queues_storage is None else StorageWriter(queues_storage)
        self._lease_lost = False  # another process serves our identifier now
        self._deadline: float | None = None  # engine.next_deadline(), at the pass's start
        self._fill_failing = False  # reading a restored queue failed (logged once)
        self._lease_watch: LeaseWatch | None = None  # a holder's lease checks

        if self._standby is not None:
            self.link.set_gate(self._take_over, self._standby.lease_poll)
        elif queues_storage is not None:
            self._load(queues_storage)
            self._lease_watch = lease_watch(queues_storage)

        packeter.set_stream_handler(self)
        self.link.on_loop_pass.add(self._on_loop_pass)
        self.link.add_deadline_hook(self._next_deadline)

    def _load(self, storage: QueuesStorage) -> None:
        state = load_state(storage)  # a window of each queue, if the storage can
        with self._lock:
            events = self._engine.restore(state, time.monotonic())
            self._deferred.extend(events)
            self._store(report=False)

    def _take_over(self) -> bool:
        """The link's gate while a standby: take the lease, load, go on."""
        lease = self._standby
        if lease is None:
            return True
        try:
            if not take_over_attempt(lease):  # may wait on the server up to lease_poll
                return False
            assert self.storage is not None
            self._load(self.storage)
        except Exception:
            log.exception("standby %r: cannot take over yet", self.identifier)
            return False
        log.warning("standby %r took over: serving it now", self.identifier)
        self._standby = None
        self._lease_watch = lease_watch(self.storage)
        return True

    @property
    def standby(self) -> bool:
        """True while another process serves this identifier (see
        ``queues_storage``); ``send_message`` raises ``StorageError`` then."""
        return self._standby is not None

    # ---------------------------------------------------------- attributes

    @property
    def keepalive_interval(self) -> float | None:
        """Seconds of silence before a connection is pinged (``None``: never)."""
        return self._engine.keepalive_interval

    @keepalive_interval.setter
    def keepalive_interval(self, value: float | None) -> None:
        if value is not None:
            check_seconds(value, "keepalive_interval")
        with self._lock:
            self._engine.keepalive_interval = value
        self.link.wakeup_poll()

    @property
    def keepalive_wait(self) -> float:
        """Seconds to wait for the answer to a ping before disconnecting."""
        return self._engine.keepalive_wait

    @keepalive_wait.setter
    def keepalive_wait(self, value: float) -> None:
        check_seconds(value, "keepalive_wait")
        with self._lock:
            self._engine.keepalive_wait = value

    @property
    def write_stall_timeout(self) -> float | None:
        """Seconds a write may wait for the peer to take it before the
        connection is closed (``None``: never)."""
        return self._engine.write_stall_timeout

    @write_stall_timeout.setter
    def write_stall_timeout(self, value: float | None) -> None:
        with self._lock:
            self._engine.write_stall_timeout = value
        self.link.wakeup_poll()

    @property
    def engine(self) -> Engine:
        """The protocol engine (call it only under ``lock``)."""
        return self._engine

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    # ---------------------------------------------------------------- API

    def send_message(self, ident: str, message: Message) -> None:
        """Queue ``message`` for the peer ``ident``.  Thread-safe.

        A persistent message (``FLAG_PERSISTENT``, with a storage) is durable
        when this returns.  Sending to this peer's own identifier queues the
        message, which is never delivered.

        Raises:
            TypeError, ValueError: ``ident`` or ``message`` is not valid.
            StorageError: the message could not be stored (it is kept in
                memory and stored with the next pass), or this peer is a
                standby.
        """
        if self._standby is not None:
            raise StorageError(
                f"peer {self.identifier!r} is a standby: another process serves it; "
                "send once it took over (Messaging.standby is False)"
            )
        with self._lock:
            engine = self._engine
            if threading.get_ident() != self._loop_thread and engine.queue_full(ident):
                self._waiting += 1
                try:
                    while not engine.queue_has_room(ident):
                        self._room.wait()
                finally:
                    self._waiting -= 1
            events = engine.send_message(ident, message, time.monotonic())
            if message.flags & FLAG_PERSISTENT:  # warns once without a storage
                self._persistent_check.check(ident, message)
            if events:
                self._deferred.extend(events)
            if self._writer is not None:
                self._store(report=False)  # raises: the send fails, its changes are kept
            woken = self._dirty  # the send that made it dirty wakes the loop
            self._dirty = True
        if not woken:  # (a pass's on_loop_pass is due while _dirty is set)
            self.link.wakeup_poll()

    def queued(self, ident: str) -> list[Message]:
        """The messages waiting for ``ident``, oldest first."""
        with self._lock:
            return self._engine.queued(ident)

    def connected_idents(self) -> dict[str, str]:
        """``{ident: conn_id}`` of the identified peers connected now."""
        with self._lock:
            return self._engine.connected_idents()

    # ------------------------------------------------------------- storage

    def _store(self, *, report: bool) -> None:
        """Apply the engine's storage changes now (lock held).  With
        ``report`` (the loop) a failure is logged once per streak and
        swallowed; without (``send_message``) it raises.  Either way the
        changes are kept and retried first next time."""
        writer = self._writer
        if writer is None:
            return
        writer.add(self._engine.take_storage_batch())
        if not report:
            writer.apply(report=False)
            return
        if writer.apply_or_log():
            return
        storage = self.storage
        if isinstance(storage, Lease) and storage.lost:
            self._lease_lost = True  # acted on after the pass, without the lock

    def _step_down(self) -> None:
        """Another process serves this identifier now: stop serving it (close
        every connection, stop the loop); what this one still holds is in
        the database, which the new holder loaded."""
        log.critical(
            "%r was taken over by another process (lease lost): closing every connection "
            "and stopping the loop",
            self.identifier,
        )
        self._lease_lost = False
        self._lease_watch = None
        for conn_id in list(self._outs):
            self._close(conn_id)
        self.link.stop()

    # ---------------------------------------------------- stream handler

    def stream_connect(self, conn_id: str) -> None:
        idents = None
        cfg = self.link.get_ssl_config(conn_id)
        if cfg is not None and cfg.bind_ident:
            idents = cert_idents(self.link.getpeercert(conn_id))
        outbound = self.link.is_outbound(conn_id)
        with self._lock:
            self._engine.connection_made(
                conn_id, time.monotonic(), cert_idents=idents, outbound=outbound
            )
        self._outs[conn_id] = _Out()
        self._flush(conn_id)

    def stream_disconnect(self, conn_id: str) -> None:
        self._outs.pop(conn_id, None)
        with self._lock:
            events = self._engine.connection_lost(conn_id, time.monotonic())
        if events:
            self._dispatch(events)

    def stream_recv(self, conn_id: str, data: memoryview) -> None:
        self._report_what_is_listened()
        with self._lock:
            events = self._engine.receive_data(conn_id, data, time.monotonic())
            if self._waiting:
                self._room.notify_all()  # acknowledgements may have made room
        if events:
            self._dispatch(events)
        self._flush_wanted.add(conn_id)  # _flush(), inline: every read

    def stream_ready(self, conn_id: str, sent_length: int) -> None:
        out = self._outs.get(conn_id)
        if out is None or out.buf is None:
            return
        self._report_what_is_listened()
        buf = out.buf
        done = sent_length >= len(buf)
        with self._lock:
            engine = self._engine
            events = engine.data_sent(conn_id, sent_length)
            # The link may report a send after this pass's write step (one
            # that on_loop_pass started and the socket took at once): write
            # what follows now rather than a pass later (and the storage
            # changes data_sent made, as the pass's write step would have).
            more = done and not events and (self._writer is not None or engine.wants_write(conn_id))
        if done:
            out.buf = None
        else:
            out.buf = rest = buf[sent_length:]
            self.link.send(conn_id, rest)
        if events:
            self._dispatch(events)
            if done:  # asked after the callbacks: they may have queued more
                with self._lock:
                    more = self._writer is not None or self._engine.wants_write(conn_id)
        if more and out.buf is None:
            self._write_out((conn_id,))

    def _report_what_is_listened(self) -> None:
        # per-message events nobody listens to are not even built (a plain
        # function assigned in place of a Callback listens); every read and
        # every finished send asks
        engine = self._engine
        on_settled = self.on_message_settled  # reported by both (legacy: sent)
        settled = type(on_settled) is not Callback or bool(on_settled.callbacks)
        on_sent = self.on_message_sent
        engine.report_sent = settled or type(on_sent) is not Callback or bool(on_sent.callbacks)
        on_dl = self.on_message_delivered
        engine.report_delivered = settled or type(on_dl) is not Callback or bool(on_dl.callbacks)

    def _flush(self, conn_id: str) -> None:
        """Ask for ``conn_id``'s output to be written at the end of this pass."""
        self._flush_wanted.add(conn_id)

    def _write_out(self, conn_ids: Iterable[str]) -> None:
        """Apply the pass's storage changes in one transaction, then give the
        engine's next bytes of every connection in ``conn_ids`` to the link
        (one ``send`` each): nothing reaches a peer before it is on disk."""
        outs = self._outs
        batches: list[tuple[str, _Out, bytes]] = []
        with self._lock:
            if self._writer is not None:
                self._store(report=True)
            data_to_send = self._engine.data_to_send
            for conn_id in conn_ids:
                out = outs.get(conn_id)
                if out is None or out.buf is not None:
                    continue
                data = data_to_send(conn_id)
                if data:
                    batches.append((conn_id, out, data))
            if batches:
                self._writing(batches)
        send = self.link.send
        for conn_id, out, data in batches:
            if outs.get(conn_id) is not out:
                continue  # closed meanwhile
            out.buf = memoryview(data)
            try:
                send(conn_id, out.buf)
            except NoConnection:  # the link dropped it; on_disconnect follows
                out.buf = None

    def _writing(self, batches: list[tuple[str, _Out, bytes]]) -> None:
        """Report the writes about to start (the engine's write-stall rule);
        under the lock."""
        now = time.monotonic()
        writing = self._engine.writing
        for conn_id, _, _ in batches:
            writing(conn_id, now)

    # ------------------------------------------------------------ the loop

    def _next_deadline(self) -> float | None:
        # the link asks at the start of every pass; _on_loop_pass reuses the
        # answer (a deadline made during the pass is seen by the next one's
        # select, which then does not wait; handle_timeout checks each rule
        # against ``now`` itself, so an earlier guess costs nothing)
        with self._lock:
            self._deadline = deadline = self._engine.next_deadline()
        watch = self._lease_watch
        if watch is not None:
            check = watch.deadline(time.monotonic())
            deadline = check if deadline is None else min(deadline, check)
        return deadline

    def _on_loop_pass(self) -> None:
        self._loop_thread = threading.get_ident()
        now = time.monotonic()
        with self._lock:
            if self._waiting:
                self._room.notify_all()  # the peer may have gone: waiting producers go on
            deadline = self._deadline
            due = deadline is not None and deadline <= now
            events = self._engine.handle_timeout(now) if due else []
            fills = self._engine.fill_requests()
            if fills:  # a restored queue's window moved: read its next rows
                events += self._fill(fills, now)
                due = True
            if self._deferred:
                events = self._deferred + events
                self._deferred = []
            dirty = self._dirty or due  # a timeout may have queued pings
            self._dirty = False
        if events:
            self._dispatch(events)
        if dirty:
            wanted: Iterable[str] = list(self._outs)
            self._flush_wanted.clear()
        else:
            wanted = self._flush_wanted
            self._flush_wanted = set()
        if wanted or self._writer is not None:
            self._write_out(wanted)
        watch = self._lease_watch
        if watch is not None and watch.due(now) and watch.check(now):
            self._lease_lost = True  # the check is one round trip, bounded by the storage
        if self._lease_lost:
            self._step_down()

    def _fill(self, requests: list[FillRequest], now: float) -> list[Event]:
        """Serve the engine's reads of restored queues (lock held; a few
        thousand rows each, see ``snakemq_proto.QUEUE_WINDOW``)."""
        storage = self.storage
        assert storage is not None and isinstance(storage, WindowedStorage)
        events: list[Event] = []
        for request in requests:
            try:
                rows = storage.read_queue(request.ident, request.after, request.end, request.count)
            except StorageError:
                # the rows stay on disk; asked for again on a later pass
                if not self._fill_failing:
                    log.exception("cannot read the queue of %r from the storage", request.ident)
                self._fill_failing = True
                self._engine.fill_failed(request)
                continue
            self._fill_failing = False
            events += self._engine.filled(request, rows, now)
        return events

    def _dispatch(self, events: list[Event]) -> None:
        """Call the user's callbacks for ``events`` (lock not held).

        The hot event types are handled inline: a ``Callback`` with no
        function costs one attribute check per event, and a received message
        costs one call per user function.
        """
        received_conn: str | None = None
        received = 0
        recv_cb = self.on_message_recv
        recv_funcs = tuple(recv_cb.callbacks) if type(recv_cb) is Callback else None
        sent_funcs: tuple[Callable[..., object], ...] | None = None
        delivered_funcs: tuple[Callable[..., object], ...] | None = None
        settled_funcs: tuple[Callable[..., object], ...] | None = None
        for event in events:
            if type(event) is MessageReceived:  # the hot path
                conn_id = event.conn_id
                if conn_id != received_conn:
                    if received:
                        assert received_conn is not None
                        self._handed(received_conn, received)
                        received = 0
                    received_conn = conn_id
                received += 1
                if recv_funcs is None:
                    self._call(recv_cb, conn_id, event.ident, event.message)
                    continue
                for func in recv_funcs:
                    try:
                        func(conn_id, event.ident, event.message)
                    except Exception as exc:
                        self._callback_failed(func, conn_id, exc)
                continue
            cls = type(event)
            if cls is MessageSent:
                assert isinstance(event, MessageSent)
                if sent_funcs is None:
                    sent_funcs = self._funcs(self.on_message_sent)
                for func in sent_funcs:
                    try:
                        func(event.conn_id, event.ident, event.uuid)
                    except Exception:
                        log.exception("on_message_sent callback %r raised", func)
                if event.settled:  # a 1.6 peer: written is its last step
                    if settled_funcs is None:
                        settled_funcs = self._funcs(self.on_message_settled)
                    self._settled(settled_funcs, event.ident, event.uuid)
            elif cls is MessageDelivered:
                assert isinstance(event, MessageDelivered)
                if delivered_funcs is None:
                    delivered_funcs = self._funcs(self.on_message_delivered)
                for func in delivered_funcs:
                    try:
                        func(event.ident, event.uuid)
                    except Exception:
                        log.exception("on_message_delivered callback %r raised", func)
                if settled_funcs is None:
                    settled_funcs = self._funcs(self.on_message_settled)
                self._settled(settled_funcs, event.ident, event.uuid)
            elif cls is MessageDropped:
                assert isinstance(event, MessageDropped)
                log.debug("ident=%r dropped %s (TTL)", event.ident, event.uuid.hex())
                self._call(self.on_message_drop, event.ident, event.uuid)
            elif cls is PeerConnected:
                assert isinstance(event, PeerConnected)
                log.info(
                    "conn=%s peer %r identified%s",
                    event.conn_id,
                    event.ident,
                    " (legacy 1.6 peer)" if event.legacy else "",
                )
                self.link.identified(event.conn_id)  # the connector's back-off starts over
                self._flush(event.conn_id)  # also one that took over a crossed dial
                self._call(self.on_connect, event.conn_id, event.ident)
            elif cls is PeerDisconnected:
                assert isinstance(event, PeerDisconnected)
                for address in self._held.release(event.ident):
                    self.link.release_redial(address)
                self._call(self.on_disconnect, event.conn_id, event.ident)
            elif cls is ErrorOccurred:
                assert isinstance(event, ErrorOccurred)
                self._call(self.on_error, event.conn_id, event.error)
            elif cls is RedialHeld:
                assert isinstance(event, RedialHeld)
                address = self.link.hold_redial(event.conn_id)
                if address is not None:
                    self._held.hold(event.ident, address)
            elif cls is CloseConnection:
                assert isinstance(event, CloseConnection)
                if received:
                    assert received_conn is not None
                    self._handed(received_conn, received)
                    received = 0
                self._close(event.conn_id)
        if received:
            assert received_conn is not None
            with self._lock:  # _handed(), inline: every read
                self._engine.handed(received_conn, received)

    @staticmethod
    def _funcs(callback: Callable[..., object]) -> tuple[Callable[..., object], ...]:
        """The functions a callback attribute stands for (a plain function
        assigned in place of a ``Callback``, as 1.6 programs did, is one)."""
        if type(callback) is Callback:
            return tuple(callback.callbacks)
        return (callback,)

    @staticmethod
    def _settled(funcs: tuple[Callable[..., object], ...], ident: str, uuid: bytes) -> None:
        for func in funcs:
            try:
                func(ident, uuid)
            except Exception:
                log.exception("on_message_settled callback %r raised", func)

    def _callback_failed(self, func: object, conn_id: str, exc: Exception) -> None:
        log.exception("on_message_recv callback %r raised; the message counts as handed", func)
        self._call(self.on_error, conn_id, exc)

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        # ``Callback`` never raises; this guards a plain function assigned
        # in place of one (1.6 programs did that).
        try:
            callback(*args)
        except Exception as exc:
            log.exception("callback %r raised; the loop goes on", callback)
            if callback is not self.on_error and args and isinstance(args[0], str):
                self._call(self.on_error, args[0], exc)

    def _handed(self, conn_id: str, count: int) -> None:
        with self._lock:
            self._engine.handed(conn_id, count)

    def _close(self, conn_id: str) -> None:
        """Flush what the engine still has for ``conn_id`` (best effort), close."""
        with self._lock:
            data = self._engine.data_to_send(conn_id)
            self._store(report=True)
        self.link.close(conn_id, data)
        # the link reports the close through on_disconnect -> stream_disconnect,
        # which calls engine.connection_lost; make sure it happened even if the
        # connection was already gone from the link
        if conn_id in self._outs:
            self.stream_disconnect(conn_id)


class ReceiveHook:
    """Route received messages to callbacks by a regular expression matched
    against the payload (``re.match`` on ``bytes``).

    Unlike snakeMQ 1.6 it *adds* itself to ``messaging.on_message_recv``, so
    callbacks added before it keep working.
    """

    def __init__(self, messaging: Messaging) -> None:
        self.messaging = messaging
        self._hooks: dict[
            bytes | str, tuple[re.Pattern[bytes], Callable[[str, str, Message], object]]
        ] = {}
        messaging.on_message_recv.add(self._on_message_recv)

    def register(
        self, regexp: bytes | str, callback: Callable[[str, str, Message], object]
    ) -> None:
        """Call ``callback(conn_id, ident, message)`` for payloads matching ``regexp``."""
        pattern = regexp.encode() if isinstance(regexp, str) else regexp
        self._hooks[regexp] = (re.compile(pattern), callback)

    def unregister(self, regexp: bytes | str) -> None:
        del self._hooks[regexp]

    def clear(self) -> None:
        self._hooks.clear()

    def _on_message_recv(self, conn_id: str, ident: str, message: Message) -> None:
        for pattern, callback in list(self._hooks.values()):
            if pattern.match(message.data):
                try:
                    callback(conn_id, ident, message)
                except Exception:
                    log.exception("receive hook %r raised", callback)
