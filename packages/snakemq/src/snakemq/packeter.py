"""``Packeter``: packets (``[4-byte big-endian length][payload]``) over a link.

On its own it frames and unframes packets for programs that use only link +
packeter.  When a ``Messaging`` is built on it, the packeter hands the raw
byte stream of every connection to the messaging layer instead (see
``StreamHandler``): the protocol engine frames and unframes itself, so the
stream is not framed twice and many packets travel in one ``send``/``recv``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import ParamSpec, Protocol

from snakemq_proto import DEFAULT_MAX_PACKET_SIZE, PacketDecoder, RemoteProtocolError

from .callbacks import Callback
from .exceptions import NoConnection
from .link import LinkLike

__all__ = ["SEND_BLOCK_SIZE", "Packeter", "StreamHandler"]

log = logging.getLogger("snakemq.packeter")

SEND_BLOCK_SIZE = 256 * 1024
"""Queued packets are joined into writes of about this size."""

_HEADER_SIZE = 4

P = ParamSpec("P")


class StreamHandler(Protocol):
    """Takes over the byte streams of a packeter's connections."""

    def stream_connect(self, conn_id: str) -> None: ...

    def stream_disconnect(self, conn_id: str) -> None: ...

    def stream_recv(self, conn_id: str, data: memoryview) -> None:
        """``data`` is valid only during the call: copy what you keep."""

    def stream_ready(self, conn_id: str, sent_length: int) -> None: ...


class _ConnInfo:
    __slots__ = ("decoder", "in_flight", "out", "out_size", "packet_ends", "queued", "written")

    def __init__(self, max_packet_size: int) -> None:
        self.decoder = PacketDecoder(max_packet_size)
        self.out: list[bytes] = []  # packets queued, not yet given to the link
        self.out_size = 0
        self.in_flight: memoryview | None = None  # given to the link, not all written
        self.queued = 0  # bytes ever queued (offsets of packet ends)
        self.written = 0  # bytes ever written
        self.packet_ends: deque[tuple[int, int]] = deque()  # (end offset, packet id)


class Packeter:
    """Packets over a ``Link`` (or ``Throttle``).

    Callbacks:
        on_connect(conn_id), on_disconnect(conn_id)
        on_packet_recv(conn_id, packet): a complete packet (``bytes``) arrived.
        on_packet_sent(conn_id, packet_id): a packet was completely written.
        on_error(conn_id, exception): a peer sent something unacceptable
            (e.g. a packet larger than ``max_packet_size``); it is disconnected.

    Args:
        link: the link (or throttle) below.
        max_packet_size: the largest packet accepted from a peer.
    """

    def __init__(self, link: LinkLike, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.link = link
        self.max_packet_size = max_packet_size
        PacketDecoder(max_packet_size)  # validate now

        self.on_connect: Callback[[str]] = Callback()
        self.on_disconnect: Callback[[str]] = Callback()
        self.on_packet_recv: Callback[[str, bytes]] = Callback()
        self.on_packet_sent: Callback[[str, int]] = Callback()
        self.on_error: Callback[[str, Exception]] = Callback()

        self._connections: dict[str, _ConnInfo] = {}
        self._last_packet_id = 0
        self._stream: StreamHandler | None = None

        link.on_connect.add(self._on_connect)
        link.on_disconnect.add(self._on_disconnect)
        link.on_recv_view.add(self._on_recv)  # parsed at once: no copy of our own
        link.on_ready_to_send.add(self._on_ready_to_send)

    def set_stream_handler(self, handler: StreamHandler) -> None:
        """Hand the raw streams of all connections to ``handler`` (used by
        ``Messaging``); ``send_packet`` and ``on_packet_*`` stop working.

        Raises:
            ValueError: a handler is already set.
        """
        if self._stream is not None and self._stream is not handler:
            raise ValueError("this Packeter already carries a Messaging; make one per Messaging")
        self._stream = handler
        # reads and finished sends go to the handler straight from the link
        # (one call less per read and per send): in place, keeping the order
        link = self.link
        _rebind(link.on_recv_view, self._on_recv, handler.stream_recv)
        _rebind(link.on_ready_to_send, self._on_ready_to_send, handler.stream_ready)

    def send_packet(self, conn_id: str, buf: bytes) -> int:
        """Queue ``buf`` as one packet to ``conn_id``; return its packet id.

        Raises:
            TypeError: ``buf`` is not ``bytes``.
            NoConnection: ``conn_id`` is not connected.
        """
        if not isinstance(buf, bytes | bytearray):
            raise TypeError(f"buf must be bytes, not {type(buf).__name__}")
        if self._stream is not None:
            raise RuntimeError(
                "this Packeter carries a Messaging; send with Messaging.send_message"
            )
        conn = self._connections.get(conn_id)
        if conn is None:
            raise NoConnection(f"no connection {conn_id!r}")
        self._last_packet_id += 1
        packet_id = self._last_packet_id
        packet = len(buf).to_bytes(_HEADER_SIZE, "big") + bytes(buf)
        conn.out.append(packet)
        conn.out_size += len(packet)
        conn.queued += len(packet)
        conn.packet_ends.append((conn.queued, packet_id))
        if conn.in_flight is None:
            self._send_more(conn_id, conn)
        return packet_id

    def _send_more(self, conn_id: str, conn: _ConnInfo) -> None:
        if not conn.out:
            return
        if conn.out_size <= SEND_BLOCK_SIZE or len(conn.out) == 1:
            data = conn.out[0] if len(conn.out) == 1 else b"".join(conn.out)
            conn.out.clear()
        else:
            size = 0
            take = 0
            for packet in conn.out:
                size += len(packet)
                take += 1
                if size >= SEND_BLOCK_SIZE:
                    break
            data = b"".join(conn.out[:take])
            del conn.out[:take]
        conn.out_size -= len(data)
        conn.in_flight = memoryview(data)
        self.link.send(conn_id, conn.in_flight)

    # ---------------------------------------------------------- link events

    def _on_connect(self, conn_id: str) -> None:
        if self._stream is not None:
            self._stream.stream_connect(conn_id)
        else:
            self._connections[conn_id] = _ConnInfo(self.max_packet_size)
        self.on_connect(conn_id)

    def _on_disconnect(self, conn_id: str) -> None:
        if self._stream is not None:
            self._stream.stream_disconnect(conn_id)
        else:
            self._connections.pop(conn_id, None)
        self.on_disconnect(conn_id)

    def _on_recv(self, conn_id: str, data: memoryview) -> None:
        if self._stream is not None:
            self._stream.stream_recv(conn_id, data)
            return
        conn = self._connections.get(conn_id)
        if conn is None:
            return
        try:
            packets = conn.decoder.feed(data)
        except RemoteProtocolError as exc:
            log.error("conn=%s %s", conn_id, exc)
            self.on_error(conn_id, exc)
            self.link.close(conn_id)
            return
        for packet in packets:
            self.on_packet_recv(conn_id, packet.tobytes())

    def _on_ready_to_send(self, conn_id: str, sent_length: int) -> None:
        if self._stream is not None:
            self._stream.stream_ready(conn_id, sent_length)
            return
        conn = self._connections.get(conn_id)
        if conn is None or conn.in_flight is None:
            return
        conn.written += sent_length
        rest = conn.in_flight[sent_length:]
        ends = conn.packet_ends
        while ends and ends[0][0] <= conn.written:
            self.on_packet_sent(conn_id, ends.popleft()[1])
            if self._connections.get(conn_id) is not conn:
                return  # a callback closed it
        if len(rest):
            conn.in_flight = rest
            self.link.send(conn_id, rest)
        else:
            conn.in_flight = None
            self._send_more(conn_id, conn)


def _rebind(callback: Callback[P], old: Callable[P, object], new: Callable[P, object]) -> None:
    """Put ``new`` in the place of ``old`` among ``callback``'s functions."""
    funcs = callback.callbacks
    for i, func in enumerate(funcs):
        if func == old:
            funcs[i] = new
            return
