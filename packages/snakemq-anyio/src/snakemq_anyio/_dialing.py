"""``Dialer``: listeners, connectors and the TLS handshake of new connections.

Per listener an accept loop, per connector a connect/reconnect loop.  Both
hand each new stream, after its TLS handshake, to ``Connections.run``.

A connector follows the rules of ``snakemq_proto``: ``Backoff`` between
dials (started over once a connection it made identified), a dial abandoned
after ``connect_timeout``, and after a crossed dial (``RedialHeld``) no
redial until ``PeerDisconnected`` for that peer (``RedialHolds``), then a
redial at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.abc import ByteStream, SocketAttribute, SocketListener
from anyio.streams.tls import TLSAttribute, TLSStream
from snakemq_proto import (
    Backoff,
    ErrorOccurred,
    RedialHolds,
    RemoteProtocolError,
    SSLConfig,
    bind_error,
    cert_idents,
)

from ._connection import Connection, Connections, close_stream
from ._stream import MessagingEvent

__all__ = ["Dialer", "TLSHandshakeError"]

log = logging.getLogger("snakemq.anyio")


class TLSHandshakeError(RemoteProtocolError):
    """The TLS handshake of a connection failed (reported in ``ErrorOccurred``)."""


class Dialer:
    """The listeners and connectors of one ``Messaging``.

    Args:
        ident: this peer's identifier (for the log).
        connections: where new streams go.
        publish: sends an event to ``Messaging.events()`` subscribers.
        is_running: whether the ``Messaging`` still runs.
        reconnect_interval, reconnect_max_interval: the ``Backoff``.
        connect_timeout: seconds one dial may take.
        handshake_timeout: seconds a TLS handshake may take.
    """

    def __init__(
        self,
        ident: str,
        connections: Connections,
        *,
        publish: Callable[[MessagingEvent], None],
        is_running: Callable[[], bool],
        reconnect_interval: float,
        reconnect_max_interval: float,
        connect_timeout: float,
        handshake_timeout: float,
    ) -> None:
        self._ident = ident
        self._connections = connections
        self._publish = publish
        self._is_running = is_running
        self._reconnect_interval = reconnect_interval
        self._reconnect_max_interval = reconnect_max_interval
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._listeners: dict[tuple[str, int], tuple[anyio.CancelScope, anyio.Event]] = {}
        self._holds: RedialHolds[anyio.Event] = RedialHolds()

    # ------------------------------------------------------------- listeners

    async def add_listener(
        self, tg: anyio.abc.TaskGroup, host: str, port: int, ssl_config: SSLConfig | None
    ) -> tuple[str, int]:
        bound: tuple[str, int] = await tg.start(self._listen, tg, host, port, ssl_config)
        return bound

    async def remove_listener(self, address: tuple[str, int]) -> None:
        entry = self._listeners.pop(address, None)
        if entry is None:
            raise KeyError(f"no listener on {address!r}")
        scope, closed = entry
        scope.cancel()
        await closed.wait()

    async def _listen(
        self,
        tg: anyio.abc.TaskGroup,
        host: str,
        port: int,
        ssl_config: SSLConfig | None,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]],
    ) -> None:
        try:
            multi = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
        except OSError as exc:
            raise bind_error(exc, (host, port)) from exc
        bound = multi.extra(SocketAttribute.local_address)
        assert isinstance(bound, tuple)
        address = (str(bound[0]), int(bound[1]))
        closed = anyio.Event()
        with anyio.CancelScope() as scope:
            self._listeners[address] = (scope, closed)
            task_status.started(address)
            log.info("%s listening on %s:%s", self._ident, *address)
            try:
                async with multi, anyio.create_task_group() as accepting:
                    for listener in multi.listeners:
                        assert isinstance(listener, SocketListener)
                        accepting.start_soon(self._accept_loop, tg, listener, ssl_config)
            finally:
                if self._listeners.get(address, (None,))[0] is scope:
                    del self._listeners[address]
                closed.set()

    async def _accept_loop(
        self, tg: anyio.abc.TaskGroup, listener: SocketListener, ssl_config: SSLConfig | None
    ) -> None:
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

    # ------------------------------------------------------------ connectors

    async def add_connector(
        self, tg: anyio.abc.TaskGroup, host: str, port: int, ssl_config: SSLConfig | None
    ) -> anyio.CancelScope:
        scope: anyio.CancelScope = await tg.start(self._connect_loop, host, port, ssl_config)
        return scope

    async def _connect_loop(
        self,
        host: str,
        port: int,
        ssl_config: SSLConfig | None,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope],
    ) -> None:
        backoff = Backoff(self._reconnect_interval, self._reconnect_max_interval)
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                stream: ByteStream | None = None
                try:
                    with anyio.fail_after(self._connect_timeout):
                        stream = await anyio.connect_tcp(host, port)
                except (OSError, TimeoutError) as exc:
                    log.info("%s: connect to %s:%s failed: %s", self._ident, host, port, exc)
                conn = None
                if stream is not None:
                    conn = await self._serve_stream(stream, ssl_config, False, host)
                    if conn is not None and conn.identified:
                        backoff.reset()
                if not self._is_running():
                    return
                if conn is not None and conn.redial_when is not None:
                    # redundant: the peer is connected over another connection
                    log.info(
                        "%s: not redialling %s:%s while %r is connected",
                        self._ident,
                        host,
                        port,
                        conn.held_for,
                    )
                    await conn.redial_when.wait()
                    if not self._is_running():
                        return
                    backoff.reset()
                    continue  # at once
                await anyio.sleep(backoff.next_delay())

    def hold(self, conn_id: str, ident: str) -> None:
        """``RedialHeld``: the connector of ``conn_id`` waits for ``ident`` to go."""
        conn = self._connections.get(conn_id)
        if conn is not None and conn.redial_when is None:
            conn.held_for = ident
            conn.redial_when = anyio.Event()
            self._holds.hold(ident, conn.redial_when)

    def release(self, ident: str) -> None:
        """``PeerDisconnected`` for ``ident``: its held connectors redial."""
        if ident in self._holds:
            for event in self._holds.release(ident):
                event.set()

    def release_all(self) -> None:
        """Closing: no connector waits any more."""
        for event in self._holds.release_all():
            event.set()

    # -------------------------------------------------------------- streams

    async def _serve_stream(
        self,
        stream: ByteStream,
        ssl_config: SSLConfig | None,
        server_side: bool,
        hostname: str | None,
    ) -> Connection | None:
        """Run one accepted or connected stream to its end; return its
        connection (``None`` if it never got that far)."""
        conn_id = self._connections.new_id()
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
                    peer = _remote_address(stream)
                    await close_stream(stream)
                    error = TLSHandshakeError(f"TLS handshake failed: {exc or type(exc).__name__}")
                    log.warning("conn=%s peer=%r %s", conn_id, peer, error)
                    self._publish(ErrorOccurred(conn_id, None, error))
                    return None
                if ssl_config.bind_ident:
                    names = cert_idents(stream.extra(TLSAttribute.peer_certificate, None))
            return await self._connections.run(conn_id, stream, names, not server_side)
        except Exception:
            log.exception("conn=%s failed unexpectedly; it is closed", conn_id)
            await close_stream(stream)
            return None


def _remote_address(stream: ByteStream) -> object:
    """The peer's address for a log line (``None`` once the socket is gone)."""
    try:
        return stream.extra(SocketAttribute.remote_address, None)
    except OSError:
        return None
