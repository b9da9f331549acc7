"""Keepalive over real sockets."""

from __future__ import annotations

import socket
import struct
import time

from snakemq.exceptions import KeepaliveTimeoutError
from snakemq_proto import DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_WAIT
from sync_helpers import WAIT, Peer

VERSION = struct.pack("!IBI", 5, 0, 1)


def ident_frame(ident: bytes) -> bytes:
    return struct.pack("!IB", len(ident) + 1, 2) + ident


def read_packets(sock: socket.socket, buf: bytearray) -> list[bytes]:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed")
    buf += data
    packets = []
    while len(buf) >= 4:
        (size,) = struct.unpack_from("!I", buf)
        if len(buf) < 4 + size:
            break
        packets.append(bytes(buf[4 : 4 + size]))
        del buf[: 4 + size]
    return packets


def test_keepalive_detects_a_silent_peer(peers: list[Peer]) -> None:
    srv = Peer("srv")
    peers.append(srv)
    srv.messaging.keepalive_interval = 0.2
    srv.messaging.keepalive_wait = 0.3
    port = srv.listen()
    srv.start()
    with socket.create_connection(("127.0.0.1", port)) as zombie:
        zombie.sendall(VERSION + ident_frame(b"zombie"))  # handshake done, then silence
        ((conn, ident),) = srv.rec.wait_count("on_connect", 1)
        assert ident == "zombie"
        ((econn, exc),) = srv.rec.wait_count("on_error", 1)
        assert econn == conn and isinstance(exc, KeepaliveTimeoutError)
        assert srv.rec.wait_count("on_disconnect", 1) == [(conn, "zombie")]


def test_keepalive_keeps_an_answering_peer(peers: list[Peer]) -> None:
    srv = Peer("srv")
    peers.append(srv)
    srv.messaging.keepalive_interval = 0.1
    srv.messaging.keepalive_wait = 2.0
    port = srv.listen()
    srv.start()
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.settimeout(WAIT)
        peer.sendall(VERSION + ident_frame(b"alive"))
        buf = bytearray()
        pings = 0
        while pings < 3:
            for packet in read_packets(peer, buf):
                if packet == b"\x04":
                    pings += 1
                    peer.sendall(struct.pack("!IB", 1, 5))
        assert srv.rec.get("on_disconnect") == [] and srv.rec.get("on_error") == []
        assert "alive" in srv.messaging.connected_idents()


def test_keepalive_is_on_by_default(peers: list[Peer]) -> None:
    # a dead peer must be noticed by a program that never set keepalive
    srv = Peer("srv")
    peers.append(srv)
    assert srv.messaging.keepalive_interval == DEFAULT_KEEPALIVE_INTERVAL == 60.0
    assert srv.messaging.keepalive_wait == DEFAULT_KEEPALIVE_WAIT == 10.0
    port = srv.listen()
    srv.start()
    with socket.create_connection(("127.0.0.1", port)) as zombie:
        zombie.sendall(VERSION + ident_frame(b"zombie"))  # identified, then silent
        srv.rec.wait_count("on_connect", 1)
        with srv.messaging.lock:
            deadline = srv.messaging.engine.next_deadline()
        assert deadline is not None  # the ping is scheduled
        assert 0 < deadline - time.monotonic() <= DEFAULT_KEEPALIVE_INTERVAL
