"""TTL, reconnect, keepalive and delivery semantics over real sockets."""

from __future__ import annotations

import socket
import struct
import time

import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.exceptions import KeepaliveTimeoutError
from snakemq.message import Message
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


def test_ttl_expires_while_disconnected_and_is_never_delivered(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    port = a.listen()
    b.connect(port)
    a.start()
    b.start()
    a.wait_connected("b")
    b.stop()
    peers.remove(b)
    a.rec.wait_count("on_disconnect", 1)
    doomed = a.send("b", b"doomed", ttl=0.3)
    kept = a.send("b", b"kept", ttl=30)
    assert a.rec.wait_count("on_message_drop", 1) == [("b", doomed.uuid)]
    assert [m.uuid for m in a.messaging.queued("b")] == [kept.uuid]
    b2 = Peer("b")
    peers.append(b2)
    b2.connect(port)
    b2.start()
    b2.rec.wait_count("on_message_recv", 1)
    a.rec.wait_count("on_message_delivered", 1)
    assert b2.received() == [b"kept"]
    assert len(a.rec.get("on_message_drop")) == 1


def test_reconnect_after_listener_restarts(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    port = a.listen()
    b.connect(port)
    a.start()
    b.start()
    b.wait_connected("a")
    a.stop()
    peers.remove(a)
    b.rec.wait_count("on_disconnect", 1)
    b.send("a", b"queued during the outage", ttl=None)
    a2 = Peer("a")
    peers.append(a2)
    assert a2.link.add_listener(("127.0.0.1", port))[1] == port
    a2.start()
    a2.rec.wait_count("on_message_recv", 1)
    assert a2.received() == [b"queued during the outage"]
    assert len(b.rec.get("on_connect")) == 2


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


def test_legacy_peer_gets_messages_sent_but_no_delivery_acks(peers: list[Peer]) -> None:
    new, old = Peer("new"), Peer("old", legacy=True)
    peers += [new, old]
    old.connect(new.listen())
    new.start()
    old.start()
    new.wait_connected("old")
    m1 = new.send("old", b"to the old one", ttl=None)
    m2 = old.send("new", b"from the old one", ttl=None)
    old.rec.wait_count("on_message_recv", 1)
    new.rec.wait_count("on_message_recv", 1)
    assert new.rec.wait_count("on_message_sent", 1)[0][1:] == ("old", m1.uuid)
    assert old.rec.wait_count("on_message_sent", 1)[0][1:] == ("new", m2.uuid)
    assert new.messaging.queued("old") == []
    assert new.rec.get("on_message_delivered") == []


def test_sending_to_self_queues_and_never_delivers(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    a.wait_connected("b")
    to_self = a.send("a", b"me", ttl=None)
    a.send("b", b"marker", ttl=None)
    b.rec.wait_count("on_message_recv", 1)
    a.rec.wait_count("on_message_delivered", 1)
    assert a.received() == [] and b.received() == [b"marker"]
    assert [m.uuid for m in a.messaging.queued("a")] == [to_self.uuid]


def test_bad_arguments_name_the_argument(peers: list[Peer]) -> None:
    import pytest

    a = Peer("a")
    peers.append(a)
    with pytest.raises(TypeError, match="message"):
        a.messaging.send_message("b", b"raw bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ident"):
        a.messaging.send_message("x" * 51, Message(b"x"))
    with pytest.raises(TypeError, match="data"):
        Message("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        Message(b"x", ttl=-1)
    with pytest.raises(ValueError, match="keepalive_interval"):
        a.messaging.keepalive_interval = 0
    link = snakemq.link.Link()
    try:
        with pytest.raises(ValueError, match="ident"):
            snakemq.messaging.Messaging("y" * 51, "", snakemq.packeter.Packeter(link))
    finally:
        link.cleanup()


def test_the_same_message_object_sent_twice_is_delivered_once(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    m = Message(b"once", ttl=None)
    a.messaging.send_message("b", m)
    a.messaging.send_message("b", m)
    a.send("b", b"marker", ttl=None)
    a.rec.wait_count("on_message_delivered", 3)
    assert b.received() == [b"once", b"marker"]


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
