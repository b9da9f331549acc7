"""``Link``: the byte-stream layer — listeners, connectors, one ``selectors`` loop.

Theory of operation
-------------------

A ``Link`` owns every socket of a peer: listening sockets, connectors (which
reconnect with ``snakemq_proto.Backoff``: exponential, with jitter, started
over when a connection identified) and the connections either of them
produced.  A dial that has not connected within ``connect_timeout`` is
abandoned and retried like a refused one.  ``loop()`` runs passes; one pass is:

1. start the connects that are due (and give up those past their timeout);
2. ``select()`` with a timeout no longer than ``poll_timeout``, the time left
   of ``runtime``, and the earliest deadline any layer above registered with
   ``add_deadline_hook()``;
3. handle readiness: accept, finish a non-blocking connect, advance a TLS
   handshake, read up to ``recv_block_size`` bytes (-> ``on_recv`` and
   ``on_recv_view``), or write the rest of a pending send;
4. report finished sends (``on_ready_to_send``), close connections whose send
   failed, time out TLS handshakes;
5. ``on_loop_pass()``;
6. report the sends that ``on_loop_pass`` started and the socket took at once
   (``on_ready_to_send``), so a hop costs one pass: what a callback answers is
   written, and reported written, in the pass that received the question.

``send(conn_id, data)`` writes at once as much as the socket takes; the rest
is written when the socket is writable.  Once all of ``data`` is written,
``on_ready_to_send(conn_id, len(data))`` fires from the loop (never from inside
``send``), and only then may the next ``send`` on that connection start.
``wakeup_poll()`` called during a pass (before step 5) makes no extra pass:
that pass's ``on_loop_pass`` answers it.  A
send that fails closes the connection later in the same pass, never from
inside ``send`` itself, so a layer above never sees ``on_disconnect`` while it
is in the middle of writing (snakeMQ 1.6 deadlocked there).

Reads go into one buffer the link reuses (``recv_into``): a fresh 1 MiB
``bytes`` per read costs more in page faults than the copy itself.
``on_recv_view`` gets a ``memoryview`` of that buffer, valid only during the
call (the packeter feeds it to the protocol engine, which copies out what it
keeps); ``on_recv`` gets ``bytes`` of its own, copied only when some function
listens there.

``wakeup_poll()`` may be called from any thread.  It writes one byte to a
non-blocking socket pair only while the loop is blocked in ``select()``;
otherwise it just makes the next ``select()`` not wait.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from snakemq_proto import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_MAX_INTERVAL,
    Backoff,
    SSLConfig,
    bind_error,
    check_address,
    check_seconds,
)

from .callbacks import Callback
from .callbacks import failed as callback_failed
from .exceptions import NoConnection, SendNotFinished

__all__ = [
    "POLL_TIMEOUT",
    "RECONNECT_INTERVAL",
    "RECONNECT_MAX_INTERVAL",
    "RECV_BLOCK_SIZE",
    "Link",
    "LinkLike",
    "LinkSocket",
    "SSLConfig",
]

log = logging.getLogger("snakemq.link")

RECONNECT_INTERVAL = DEFAULT_RECONNECT_INTERVAL
"""Seconds before the first reconnect attempt of a connector."""
RECONNECT_MAX_INTERVAL = DEFAULT_RECONNECT_MAX_INTERVAL
"""The reconnect delay doubles after each failed attempt up to this."""
RECV_BLOCK_SIZE = 1024 * 1024
POLL_TIMEOUT = 0.2
TLS_HANDSHAKE_TIMEOUT = 30.0
CONNECT_TIMEOUT = DEFAULT_CONNECT_TIMEOUT
"""Seconds one dial may take before it is abandoned and retried."""
LISTEN_BACKLOG = 65535
"""Asked of ``listen()``; the kernel caps it (``net.core.somaxconn``, 4096 on
current Linux), as anyio does.  128 overflowed under connection churn: the
kernel then drops SYNs and the client waits a 1 s retransmit."""
_ACCEPT_BATCH = 256

Address = tuple[Any, ...]


class LinkSocket:
    """One socket of the link: a connection (or one being made)."""

    __slots__ = (
        "conn_id",
        "connector",
        "established",
        "established_at",
        "handshake_deadline",
        "in_handshake",
        "remote_peer",
        "sock",
        "ssl_config",
        "wbuf",
        "wlen",
        "writing",
    )

    def __init__(
        self,
        sock: socket.socket,
        conn_id: str,
        remote_peer: Address | None,
        ssl_config: SSLConfig | None,
        connector: _Connector | None,
    ) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.remote_peer = remote_peer
        self.ssl_config = ssl_config
        self.connector = connector
        self.established = False
        self.established_at = 0.0
        self.in_handshake = False
        self.handshake_deadline = 0.0
        self.wbuf: memoryview | None = None  # what is still to write of the current send
        self.wlen = 0  # length of the current send, reported when it is done
        self.writing = False  # registered for EVENT_WRITE

    @property
    def is_connector(self) -> bool:
        return self.connector is not None

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The remote certificate (see ``ssl.SSLSocket.getpeercert``), or
        ``None`` on a plain TCP connection or before the TLS handshake ended."""
        if not isinstance(self.sock, ssl.SSLSocket) or self.in_handshake:
            return None
        try:
            return self.sock.getpeercert(binary_form)
        except (ValueError, OSError):
            return None

    def __repr__(self) -> str:
        return f"<LinkSocket conn_id={self.conn_id!r} peer={self.remote_peer!r}>"


class _Listener:
    __slots__ = ("address", "sock", "ssl_config")

    def __init__(self, sock: socket.socket, address: Address, ssl_config: SSLConfig | None):
        self.sock = sock
        self.address = address
        self.ssl_config = ssl_config


class _Connector:
    __slots__ = (
        "addr_index",
        "address",
        "addrs",
        "backoff",
        "conn",
        "dial_deadline",
        "held",
        "interval",
        "planned",
        "ssl_config",
    )

    def __init__(
        self,
        address: Address,
        interval: float | None,
        backoff: Backoff,
        ssl_config: SSLConfig | None,
    ) -> None:
        self.address = address
        self.interval = interval  # its own; None: the link's reconnect_interval
        self.backoff = backoff
        self.held = False  # no redial until release_redial()
        self.ssl_config = ssl_config
        self.planned: float | None = None  # when the next attempt starts
        self.dial_deadline = 0.0  # when the attempt in progress is abandoned
        self.addrs: list[tuple[Any, ...]] = []  # getaddrinfo results of this attempt
        self.addr_index = 0
        self.conn: LinkSocket | None = None  # connecting or connected

    @property
    def failures(self) -> int:
        """Reconnect waits since the back-off last started over."""
        return self.backoff.failures


class _Gate:
    """What a standby link waits for, and the listeners it will open."""

    def __init__(self, gate: Callable[[], bool], interval: float) -> None:
        self.gate = gate
        self.interval = interval
        self.next_try = 0.0
        self.listeners: list[tuple[Address, SSLConfig | None]] = []


class LinkLike(Protocol):
    """What ``Packeter`` and ``Messaging`` need from a link (``Link`` or ``Throttle``)."""

    on_connect: Callback[[str]]
    on_disconnect: Callback[[str]]
    on_recv: Callback[[str, bytes]]
    on_recv_view: Callback[[str, memoryview]]
    on_ready_to_send: Callback[[str, int]]
    on_loop_pass: Callback[[]]

    def send(self, conn_id: str, data: bytes | memoryview) -> None: ...

    def close(self, conn_id: str, final_data: bytes | memoryview = b"") -> None: ...

    def wakeup_poll(self) -> None: ...

    def add_deadline_hook(self, hook: Callable[[], float | None]) -> None: ...

    def getpeercert(self, conn_id: str, binary_form: bool = False) -> Any: ...

    def get_ssl_config(self, conn_id: str) -> SSLConfig | None: ...

    def is_outbound(self, conn_id: str) -> bool | None: ...

    def hold_redial(self, conn_id: str) -> Address | None: ...

    def release_redial(self, address: Address) -> None: ...

    def identified(self, conn_id: str) -> None: ...

    def set_gate(self, gate: Callable[[], bool], interval: float) -> None: ...

    def stop(self) -> None: ...


def _set_nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not TCP (e.g. a test socket pair)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Link:
    """Keeper of listeners, connectors and the connections they make.

    Not thread-safe except ``wakeup_poll()`` and ``stop()``; synchronise with the
    loop through ``wakeup_poll()`` and ``on_loop_pass``.  Each callback is a
    ``Callback`` object; add functions with ``.add``.

    Callbacks:
        on_connect(conn_id): a connection is ready (after the TLS handshake).
        on_disconnect(conn_id): a ready connection is closed.
        on_recv(conn_id, data): bytes arrived (``bytes``, yours to keep).
        on_recv_view(conn_id, view): the same bytes as a ``memoryview`` of
            the link's read buffer, valid only until the function returns;
            for layers that parse at once and copy what they keep.
        on_ready_to_send(conn_id, sent_length): the last ``send`` is written.
        on_loop_pass(): once per loop pass, after the I/O.

    Attributes:
        reconnect_interval: default seconds before a connector's first
            reconnect attempt; it doubles per failure up to
            ``reconnect_max_interval``, each wait times a random factor in
            [0.75, 1.0]; the back-off starts over once a connection the
            connector made identified (``identified()``).
        connect_timeout: seconds one dial (TCP connect, every address of
            the name) may take before it is abandoned and retried.
        recv_block_size: the most bytes read at once (the size of the
            link's read buffer).
        tls_handshake_timeout: seconds a TLS handshake may take.
    """

    def __init__(self) -> None:
        self.reconnect_interval = RECONNECT_INTERVAL
        self.reconnect_max_interval = RECONNECT_MAX_INTERVAL
        self.connect_timeout = CONNECT_TIMEOUT
        self.recv_block_size = RECV_BLOCK_SIZE
        self.tls_handshake_timeout = TLS_HANDSHAKE_TIMEOUT

        self.on_connect: Callback[[str]] = Callback()
        self.on_disconnect: Callback[[str]] = Callback()
        self.on_recv: Callback[[str, bytes]] = Callback()
        self.on_recv_view: Callback[[str, memoryview]] = Callback()
        self.on_ready_to_send: Callback[[str, int]] = Callback()
        self.on_loop_pass: Callback[[]] = Callback()
        self._rbuf = memoryview(bytearray(0))  # the read buffer, made on first read

        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._polling = False
        self._wake_requested = False
        self._bell_rung = False
        self._wake_lock = threading.Lock()

        self._running = False
        self._ids = itertools.count(1)
        self._conns: dict[str, LinkSocket] = {}  # established or connecting/handshaking
        self._listeners: dict[Address, _Listener] = {}
        self._listener_alias: dict[Address, Address] = {}
        self._connectors: dict[Address, _Connector] = {}
        self._plan: list[tuple[float, int, _Connector]] = []
        self._plan_seq = itertools.count()
        self._handshaking: set[LinkSocket] = set()
        self._dialing: set[_Connector] = set()  # dials not connected yet
        self._ready: list[LinkSocket] = []  # sends written, to report
        self._broken: list[LinkSocket] = []  # sends failed, to close
        self._ready_reads: list[LinkSocket] = []  # TLS bytes decrypted but not read yet
        self._deadline_hooks: list[Callable[[], float | None]] = []
        self._closed = False
        self._gate: _Gate | None = None

    # ------------------------------------------------------------ listeners

    def add_listener(self, address: Address, ssl_config: SSLConfig | None = None) -> Address:
        """Listen on ``address`` (``("", port)`` is every interface, port 0 a
        free port).  Returns the bound ``(host, port)``; pass it to
        ``del_listener``.

        Raises:
            TypeError, ValueError: a malformed address.
            OSError: the address cannot be bound (e.g. in use); the text names
                the address and the fix.
        """
        host, port = check_address(address)
        if ssl_config is not None:
            ssl_config.server_context()  # fail now on unusable key/cert files
        if self._gate is not None:  # a standby: listen once it takes over
            self._gate.listeners.append(((host, port), ssl_config))
            return (host, port)
        try:
            sock = _bind(host, port)
        except OSError as exc:
            raise bind_error(exc, (host, port)) from exc
        sock.setblocking(False)
        bound = sock.getsockname()
        key: Address = (bound[0], bound[1])
        if key in self._listeners:
            sock.close()
            raise ValueError(f"listener {key!r} already set")
        listener = _Listener(sock, key, ssl_config)
        self._listeners[key] = listener
        self._listener_alias[(host, port)] = key
        self._selector.register(sock, selectors.EVENT_READ, listener)
        log.debug("listening on %r%s", key, " (TLS)" if ssl_config else "")
        return key

    def del_listener(self, address: Address) -> None:
        """Stop listening on ``address`` (as returned by ``add_listener``, or
        as given to it); open connections stay."""
        key = self._listener_alias.get(tuple(address), tuple(address))
        listener = self._listeners.pop(key)
        for alias, target in list(self._listener_alias.items()):
            if target == key:
                del self._listener_alias[alias]
        self._selector.unregister(listener.sock)
        listener.sock.close()

    def set_gate(self, gate: Callable[[], bool], interval: float) -> None:
        """Be a standby until ``gate()`` returns True (asked from ``loop()``
        every ``interval`` seconds): no listener listens (those added are
        closed and opened again then) and no connector dials."""
        self._gate = _Gate(gate, interval)
        for address, listener in list(self._listeners.items()):
            self._gate.listeners.append((address, listener.ssl_config))
            self.del_listener(address)

    def _pass_gate(self, now: float) -> bool:
        gate = self._gate
        assert gate is not None
        if now < gate.next_try:
            return False
        gate.next_try = now + gate.interval
        if not gate.gate():
            return False
        self._gate = None
        for address, ssl_config in gate.listeners:
            self.add_listener(address, ssl_config)
        return True

    # ----------------------------------------------------------- connectors

    def add_connector(
        self,
        address: Address,
        reconnect_interval: float | None = None,
        ssl_config: SSLConfig | None = None,
    ) -> Address:
        """Keep a connection to ``address`` open, reconnecting as needed.

        Host names and IPv6 work (resolved at every attempt).  Connects start
        from ``loop()``.  Returns the key for ``del_connector``.

        Raises:
            TypeError, ValueError: a malformed address or interval, or a
                connector to this address already exists.
        """
        host, port = check_address(address)
        if reconnect_interval is not None:
            check_seconds(reconnect_interval, "reconnect_interval")
        key: Address = (host, port)
        if key in self._connectors:
            raise ValueError(f"connector {key!r} already set")
        if ssl_config is not None:
            ssl_config.client_context()
        backoff = Backoff(
            reconnect_interval or self.reconnect_interval, self.reconnect_max_interval
        )
        connector = _Connector(key, reconnect_interval, backoff, ssl_config)
        self._connectors[key] = connector
        self._plan_connect(connector, 0.0)
        return key

    def del_connector(self, address: Address) -> None:
        """Remove a connector and close its connection."""
        connector = self._connectors.pop(tuple(address))
        connector.planned = None
        self._dialing.discard(connector)
        conn = connector.conn
        if conn is not None:
            self._close(conn)

    # ----------------------------------------------------------------- I/O

    def send(self, conn_id: str, data: bytes | memoryview) -> None:
        """Start writing ``data``; wait for ``on_ready_to_send`` before the next
        ``send`` on this connection.

        Raises:
            NoConnection: ``conn_id`` is not an open connection.
            SendNotFinished: the previous send is still being written.
        """
        conn = self._conns.get(conn_id)
        if conn is None or not conn.established:
            raise NoConnection(f"no open connection {conn_id!r}")
        if conn.wbuf is not None:
            raise SendNotFinished(
                f"the previous send on {conn_id!r} is not finished; wait for on_ready_to_send"
            )
        view = data if isinstance(data, memoryview) else memoryview(data)
        conn.wlen = len(view)
        conn.wbuf = view
        self._write(conn)
        if self._polling:
            self.wakeup_poll()  # another thread sends: let the loop report it

    def close(self, conn_id: str, final_data: bytes | memoryview = b"") -> None:
        """Close a connection, first trying (without blocking) to write what
        its current send has left and then ``final_data``.  Unknown ids are
        ignored, so closing twice is harmless."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if conn.established and not conn.in_handshake:
            rest = bytes(conn.wbuf) if conn.wbuf is not None else b""
            tail = rest + bytes(final_data) if final_data else rest
            if tail:
                with contextlib.suppress(OSError, ValueError):
                    conn.sock.send(tail)
        self._close(conn)

    def getpeercert(self, conn_id: str, binary_form: bool = False) -> Any:
        """The remote TLS certificate of ``conn_id`` (``None`` without TLS)."""
        conn = self._conns.get(conn_id)
        if conn is None:
            raise NoConnection(f"no open connection {conn_id!r}")
        return conn.getpeercert(binary_form)

    def remote_address(self, conn_id: str) -> Address | None:
        """The remote ``(host, port)`` of ``conn_id`` (``None`` once it is closed)."""
        conn = self._conns.get(conn_id)
        return None if conn is None else conn.remote_peer

    def get_ssl_config(self, conn_id: str) -> SSLConfig | None:
        """The ``SSLConfig`` of the listener/connector that made ``conn_id``."""
        conn = self._conns.get(conn_id)
        return None if conn is None else conn.ssl_config

    def is_outbound(self, conn_id: str) -> bool | None:
        """Whether a connector of ours dialled ``conn_id`` (``None``: unknown id)."""
        conn = self._conns.get(conn_id)
        return None if conn is None else conn.is_connector

    def hold_redial(self, conn_id: str) -> Address | None:
        """Keep the connector that dialled ``conn_id`` from redialling once
        that connection closes, until ``release_redial()``.  Return the
        connector's address, or ``None`` when ``conn_id`` was accepted (or
        its connector was deleted).  The messaging layer holds a redundant
        dial while the peer is connected over another connection."""
        conn = self._conns.get(conn_id)
        connector = conn.connector if conn is not None else None
        if connector is None or self._connectors.get(connector.address) is not connector:
            return None
        connector.held = True
        return connector.address

    def release_redial(self, address: Address) -> None:
        """Let a held connector dial again, at once (harmless when it is not held)."""
        connector = self._connectors.get(tuple(address))
        if connector is None or not connector.held:
            return
        connector.held = False
        if connector.conn is None:
            log.info("connector %r: redialling (released)", connector.address)
            connector.backoff.reset()
            self._plan_connect(connector, 0.0)
            self.wakeup_poll()  # may be called from outside a loop pass

    def identified(self, conn_id: str) -> None:
        """``conn_id`` completed the snakemq handshake: the back-off of the
        connector that dialled it (if any) starts over."""
        conn = self._conns.get(conn_id)
        if conn is not None and conn.connector is not None:
            conn.connector.backoff.reset()

    def get_socket_by_conn(self, conn_id: str) -> LinkSocket:
        """The ``LinkSocket`` of ``conn_id`` (1.6 API)."""
        conn = self._conns.get(conn_id)
        if conn is None:
            raise NoConnection(f"no open connection {conn_id!r}")
        return conn

    def connections(self) -> list[str]:
        """Ids of the open (ready) connections."""
        return [c for c, s in self._conns.items() if s.established and not s.in_handshake]

    def add_deadline_hook(self, hook: Callable[[], float | None]) -> None:
        """``hook()`` returns the next ``time.monotonic()`` instant at which a
        layer above needs a loop pass (or ``None``); ``select`` waits no longer."""
        self._deadline_hooks.append(hook)

    # ----------------------------------------------------------------- loop

    def wakeup_poll(self) -> None:
        """Make the loop run a pass soon.  Thread-safe, never blocks."""
        self._wake_requested = True
        if self._polling and not self._bell_rung:
            with self._wake_lock:
                if self._bell_rung:
                    return
                self._bell_rung = True
            with contextlib.suppress(OSError):  # closed by cleanup()
                self._wake_w.send(b"\0")

    def loop(
        self,
        poll_timeout: float = POLL_TIMEOUT,
        count: int | None = None,
        runtime: float | None = None,
    ) -> None:
        """Run loop passes until ``stop()``, ``count`` passes with I/O events,
        or ``runtime`` seconds (never longer: the last wait is cut short).

        Errors of connecting, reading or writing never escape: they close the
        connection concerned (and a connector retries).
        """
        if self._closed:
            raise RuntimeError("this Link was cleaned up; make a new one")
        self._running = True
        monotonic = time.monotonic
        end = None if runtime is None else monotonic() + runtime
        select = self._selector.select
        try:
            while self._running and (count is None or count > 0):
                now = monotonic()
                if self._gate is not None and not self._pass_gate(now):
                    self._standby_pass(min(poll_timeout, self._gate.next_try - now), end)
                    continue
                if self._plan and self._plan[0][0] <= now:
                    self._deal_connects(now)
                timeout = poll_timeout
                if end is not None:
                    left = end - now
                    if left <= 0:
                        break
                    if left < timeout:
                        timeout = left
                for hook in self._deadline_hooks:
                    deadline = hook()
                    if deadline is not None and deadline - now < timeout:
                        timeout = max(0.0, deadline - now)
                if self._plan and self._plan[0][0] - now < timeout:
                    timeout = max(0.0, self._plan[0][0] - now)
                if self._handshaking:
                    first = min(c.handshake_deadline for c in self._handshaking)
                    timeout = max(0.0, min(timeout, first - now))
                if self._dialing:
                    first = min(c.dial_deadline for c in self._dialing)
                    timeout = max(0.0, min(timeout, first - now))
                if self._ready or self._broken or self._ready_reads:
                    timeout = 0.0
                self._polling = True
                if self._wake_requested:
                    timeout = 0.0
                try:
                    events = select(timeout)
                finally:
                    self._polling = False
                real = 0
                for key, mask in events:
                    data = key.data
                    if data is None:
                        self._drain_bell()
                    else:
                        real += 1
                        try:
                            if type(data) is LinkSocket:
                                self._handle_conn(data, mask)
                            elif type(data) is _Listener:
                                self._accept(data)
                        except Exception:  # a bug must not kill every connection
                            log.exception("unexpected error handling %r; closing it", data)
                            if type(data) is LinkSocket:
                                self._close(data)
                # A wake-up asked for during the pass (a callback's send_message)
                # is answered by this pass's on_loop_pass: no empty pass for it.
                self._wake_requested = False
                if (
                    self._ready
                    or self._broken
                    or self._ready_reads
                    or self._dialing
                    or self._handshaking
                ):
                    self._after_io(monotonic())
                on_pass = self.on_loop_pass
                funcs = on_pass.callbacks if type(on_pass) is Callback else None
                if funcs is not None and len(funcs) == 1:  # Callback.__call__, inline
                    try:
                        funcs[0]()
                    except Exception:
                        callback_failed(funcs[0])
                else:
                    on_pass()
                if self._ready:  # sends on_loop_pass started and finished at once
                    self._report_ready()
                if real and count is not None:
                    count -= 1
        finally:
            self._running = False

    def _standby_pass(self, timeout: float, end: float | None) -> None:
        """A loop pass of a standby: wait for a wake-up, a deadline or the
        next look at the gate; no socket I/O."""
        now = time.monotonic()
        if end is not None:
            timeout = min(timeout, end - now)
            if timeout <= 0:
                self._running = False
                return
        for hook in self._deadline_hooks:
            deadline = hook()
            if deadline is not None:
                timeout = min(timeout, deadline - now)
        for key, _ in self._selector.select(max(0.0, timeout)):
            if key.data is None:
                self._drain_bell()
        self.on_loop_pass()

    def stop(self) -> None:
        """Make ``loop()`` return after the current pass (thread-safe)."""
        self._running = False
        self.wakeup_poll()

    def cleanup(self) -> None:
        """Close every socket, listener and connector (``on_disconnect`` fires
        for open connections).  The link cannot loop afterwards."""
        if self._closed:
            return
        for address in list(self._connectors):
            self.del_connector(address)
        for address in list(self._listeners):
            self.del_listener(address)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._closed = True
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------- internal

    def _drain_bell(self) -> None:
        # one recv: the bell holds at most one byte (_bell_rung is set until
        # here); should it hold more, select reports it again next pass
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        self._bell_rung = False

    def _new_id(self, sock: socket.socket) -> str:
        return f"{next(self._ids)}fd{sock.fileno()}"

    def _plan_connect(self, connector: _Connector, delay: float) -> None:
        when = time.monotonic() + delay
        connector.planned = when
        heapq.heappush(self._plan, (when, next(self._plan_seq), connector))

    def _retry_later(self, connector: _Connector) -> None:
        if self._connectors.get(connector.address) is not connector:
            return  # deleted
        self._dialing.discard(connector)
        if connector.held:
            log.info("connector %r: holding the redial (the peer is connected)", connector.address)
            return
        backoff = connector.backoff
        backoff.interval = connector.interval or self.reconnect_interval  # may have changed
        backoff.max_interval = self.reconnect_max_interval
        delay = backoff.next_delay()
        log.debug("connector %r: next attempt in %.2f s", connector.address, delay)
        self._plan_connect(connector, delay)

    def _deal_connects(self, now: float) -> None:
        plan = self._plan
        while plan and plan[0][0] <= now:
            when, _, connector = heapq.heappop(plan)
            if connector.planned != when or connector.conn is not None:
                continue  # stale entry
            connector.planned = None
            host, port = connector.address
            try:
                connector.addrs = socket.getaddrinfo(
                    host or "localhost", port, socket.AF_UNSPEC, socket.SOCK_STREAM
                )
            except OSError as exc:
                log.warning("connector %r: cannot resolve: %s", connector.address, exc)
                self._retry_later(connector)
                continue
            connector.addr_index = 0
            connector.dial_deadline = now + self.connect_timeout
            self._dialing.add(connector)
            self._connect_next(connector)

    def _connect_next(self, connector: _Connector) -> None:
        """Try the connector's addresses from ``addr_index`` until one is in
        progress or connected; retry later when all failed."""
        while connector.addr_index < len(connector.addrs):
            family, stype, proto, _, sockaddr = connector.addrs[connector.addr_index]
            connector.addr_index += 1
            try:
                sock = socket.socket(family, stype, proto)
            except OSError as exc:
                log.debug("connector %r: socket(): %s", connector.address, exc)
                continue
            sock.setblocking(False)
            _set_nodelay(sock)
            try:
                err = sock.connect_ex(sockaddr)
            except OSError as exc:
                err = exc.errno or errno.EINVAL
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY):
                conn = LinkSocket(
                    sock, self._new_id(sock), sockaddr, connector.ssl_config, connector
                )
                connector.conn = conn
                self._conns[conn.conn_id] = conn
                if err == 0:
                    self._selector.register(sock, selectors.EVENT_READ, conn)
                    self._connected(conn)
                else:
                    conn.writing = True
                    self._selector.register(sock, selectors.EVENT_WRITE, conn)
                return
            log.debug(
                "connector %r -> %r: %s", connector.address, sockaddr, errno.errorcode.get(err, err)
            )
            sock.close()
        log.info("connector %r: no address answered", connector.address)
        self._retry_later(connector)

    def _connected(self, conn: LinkSocket) -> None:
        """TCP is up (either direction): start TLS or report the connection."""
        if conn.connector is not None:
            self._dialing.discard(conn.connector)
        if conn.ssl_config is not None:
            cfg = conn.ssl_config
            try:
                if conn.connector is not None:
                    host = conn.connector.address[0] if cfg.check_hostname else None
                    conn.sock = cfg.client_context().wrap_socket(
                        conn.sock,
                        server_side=False,
                        do_handshake_on_connect=False,
                        server_hostname=host,
                    )
                else:
                    conn.sock = cfg.server_context().wrap_socket(
                        conn.sock, server_side=True, do_handshake_on_connect=False
                    )
            except (OSError, ValueError) as exc:
                log.error("conn=%s TLS setup failed: %s", conn.conn_id, exc)
                self._close(conn)
                return
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False
            conn.in_handshake = True
            conn.established = True
            conn.handshake_deadline = time.monotonic() + self.tls_handshake_timeout
            self._handshaking.add(conn)
            self._handshake(conn)
            return
        if conn.writing:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False
        self._ready_conn(conn)

    def _ready_conn(self, conn: LinkSocket) -> None:
        conn.established = True
        conn.established_at = time.monotonic()
        log.info("connect %s %r", conn.conn_id, conn.remote_peer)
        self.on_connect(conn.conn_id)

    def _handshake(self, conn: LinkSocket) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:
            # a peer's failure, not ours: WARNING, as snakemq_anyio logs it
            log.warning(
                "conn=%s peer=%r TLS handshake failed: %s", conn.conn_id, conn.remote_peer, exc
            )
            self._close(conn)
            return
        self._handshaking.discard(conn)
        conn.in_handshake = False
        self._want(conn, selectors.EVENT_READ)
        log.debug("conn=%s TLS handshake done, cipher=%r", conn.conn_id, sock.cipher())
        self._ready_conn(conn)

    def _want(self, conn: LinkSocket, events: int) -> None:
        writing = bool(events & selectors.EVENT_WRITE)
        if writing != conn.writing:
            conn.writing = writing
            self._selector.modify(conn.sock, events, conn)

    def _accept(self, listener: _Listener) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep the loop alive
                log.error("accept on %r: %s", listener.address, exc)
                return
            sock.setblocking(False)
            _set_nodelay(sock)
            conn = LinkSocket(sock, self._new_id(sock), addr, listener.ssl_config, None)
            self._conns[conn.conn_id] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            log.debug("accept %s %r", conn.conn_id, addr)
            self._connected(conn)

    def _handle_conn(self, conn: LinkSocket, mask: int) -> None:
        if self._conns.get(conn.conn_id) is not conn:
            return  # closed earlier in this pass
        if not conn.established:
            # non-blocking connect finished (EVENT_WRITE)
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                connector = conn.connector
                log.debug("connect %r: %s", conn.remote_peer, errno.errorcode.get(err, str(err)))
                self._drop(conn)
                if connector is not None:
                    connector.conn = None
                    self._connect_next(connector)
                return
            self._connected(conn)
            return
        if conn.in_handshake:
            self._handshake(conn)
            return
        if mask & selectors.EVENT_WRITE and conn.wbuf is not None:
            self._write(conn)
            if self._conns.get(conn.conn_id) is not conn:
                return
        if mask & selectors.EVENT_READ:
            self._read(conn)

    def _read_buffer(self) -> memoryview:
        buf = self._rbuf
        if len(buf) != self.recv_block_size:
            if self.recv_block_size < 1:
                raise ValueError(f"recv_block_size must be >= 1, got {self.recv_block_size!r}")
            buf = self._rbuf = memoryview(bytearray(self.recv_block_size))
        return buf

    def _deliver(self, conn: LinkSocket, view: memoryview) -> None:
        """Hand bytes read into the link's buffer to the layers above."""
        on_recv = self.on_recv
        if type(on_recv) is not Callback or on_recv.callbacks:
            on_recv(conn.conn_id, view.tobytes())
            if self._conns.get(conn.conn_id) is not conn:
                return
        on_view = self.on_recv_view
        funcs = on_view.callbacks if type(on_view) is Callback else None
        if funcs is not None and len(funcs) == 1:  # Callback.__call__, inline: per read
            try:
                funcs[0](conn.conn_id, view)
            except Exception:
                callback_failed(funcs[0])
        else:
            on_view(conn.conn_id, view)

    def _read(self, conn: LinkSocket) -> None:
        sock = conn.sock
        if type(sock) is not socket.socket:
            self._read_tls(conn)
            return
        buf = self._rbuf
        if len(buf) != self.recv_block_size:
            buf = self._read_buffer()
        try:
            n = sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError) as exc:
            log.info("recv %s: %s", conn.conn_id, exc)
            self._close(conn)
            return
        if not n:
            self._close(conn)
            return
        self._deliver(conn, buf[:n])

    def _read_tls(self, conn: LinkSocket) -> None:
        # One SSL recv() returns at most one TLS record (16 KiB), and bytes
        # OpenSSL already decrypted are invisible to select(): read until
        # OpenSSL wants more from the socket, up to recv_block_size.
        sock = conn.sock
        buf = self._read_buffer()
        total = 0
        limit = len(buf)
        eof = False
        try:
            while total < limit:
                n = sock.recv_into(buf[total:])
                if not n:
                    eof = True
                    break
                total += n
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError) as exc:
            log.info("recv %s: %s", conn.conn_id, exc)
            eof = True
        if total:
            self._deliver(conn, buf[:total])
            if self._conns.get(conn.conn_id) is not conn:
                return
        if eof:
            self._close(conn)
        elif total >= limit and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._ready_reads.append(conn)  # more decrypted bytes: next pass

    def _write(self, conn: LinkSocket) -> None:
        buf = conn.wbuf
        assert buf is not None
        if conn.in_handshake:
            return
        try:
            sent = conn.sock.send(buf)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            sent = 0
        except (OSError, ValueError) as exc:
            log.info("send %s: %s", conn.conn_id, exc)
            conn.wbuf = None
            self._broken.append(conn)
            return
        if sent >= len(buf):
            conn.wbuf = None
            if conn.writing:
                self._want(conn, selectors.EVENT_READ)
            self._ready.append(conn)
            return
        conn.wbuf = buf[sent:]
        if not conn.writing:
            self._want(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _after_io(self, now: float) -> None:
        if self._ready_reads:
            pending, self._ready_reads = self._ready_reads, []
            for conn in pending:
                if self._conns.get(conn.conn_id) is conn:
                    self._read_tls(conn)
        if self._broken:
            broken, self._broken = self._broken, []
            for conn in broken:
                if self._conns.get(conn.conn_id) is conn:
                    self._close(conn)
        if self._ready:
            self._report_ready()
        if self._dialing:
            for connector in [c for c in self._dialing if c.dial_deadline <= now]:
                self._dial_timed_out(connector)
        if self._handshaking:
            for conn in [c for c in self._handshaking if c.handshake_deadline <= now]:
                log.warning(
                    "conn=%s peer=%r TLS handshake failed: timed out after %s s",
                    conn.conn_id,
                    conn.remote_peer,
                    self.tls_handshake_timeout,
                )
                self._close(conn)

    def _report_ready(self) -> None:
        ready, self._ready = self._ready, []
        for conn in ready:
            if self._conns.get(conn.conn_id) is conn:
                on_ready = self.on_ready_to_send
                funcs = on_ready.callbacks if type(on_ready) is Callback else None
                if funcs is not None and len(funcs) == 1:  # Callback.__call__, inline
                    try:
                        funcs[0](conn.conn_id, conn.wlen)
                    except Exception:
                        callback_failed(funcs[0])
                else:
                    on_ready(conn.conn_id, conn.wlen)

    def _dial_timed_out(self, connector: _Connector) -> None:
        log.info(
            "connector %r: connect timed out after %s s", connector.address, self.connect_timeout
        )
        conn = connector.conn
        if conn is not None:
            connector.conn = None
            self._drop(conn)
        self._retry_later(connector)

    def _drop(self, conn: LinkSocket) -> None:
        """Forget and close a socket without any callback."""
        self._conns.pop(conn.conn_id, None)
        self._handshaking.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _close(self, conn: LinkSocket) -> None:
        if self._conns.get(conn.conn_id) is not conn:
            return
        was_ready = conn.established and not conn.in_handshake
        conn.wbuf = None
        self._drop(conn)
        if was_ready:
            log.info("disconnect %s", conn.conn_id)
            self.on_disconnect(conn.conn_id)
        connector = conn.connector
        if connector is not None and connector.conn is conn:
            connector.conn = None
            self._retry_later(connector)


def _bind(host: str, port: int) -> socket.socket:
    if host == "" and socket.has_dualstack_ipv6():
        return socket.create_server(
            ("", port), family=socket.AF_INET6, backlog=LISTEN_BACKLOG, dualstack_ipv6=True
        )
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    # a name with both families (localhost) binds IPv4, as 1.6 did;
    # connectors try every address, so they find it either way
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
