"""Hostile input against a live listener while a good peer keeps exchanging."""

from __future__ import annotations

import logging
import socket
import struct
import threading

import pytest
from snakemq.exceptions import (
    DuplicateIdentError,
    HandshakeTimeoutError,
    MalformedFrameError,
    PacketTooLargeError,
    RemoteProtocolError,
    SlowReaderError,
    UnexpectedFrameError,
)
from snakemq.message import Message
from snakemq_proto import CAP_ACK, Capabilities, encode_packet
from sync_helpers import WAIT, Peer

VERSION = struct.pack("!IBI", 5, 0, 1)


def ident_frame(ident: bytes) -> bytes:
    return struct.pack("!IB", len(ident) + 1, 2) + ident


HOSTILE: list[tuple[str, bytes, type[RemoteProtocolError]]] = [
    ("http get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PacketTooLargeError),
    ("huge length header", b"\xff\xff\xff\xfe", PacketTooLargeError),
    ("zero-length packet", b"\x00\x00\x00\x00", MalformedFrameError),
    ("garbage", bytes(range(7, 200)), PacketTooLargeError),
    ("message before handshake", struct.pack("!IB", 25, 3) + bytes(24), UnexpectedFrameError),
    ("bad version frame", struct.pack("!IB", 2, 0) + b"\x01", MalformedFrameError),
    ("bad utf-8 ident", VERSION + ident_frame(b"\xff\xfe"), MalformedFrameError),
    ("ident too long", VERSION + ident_frame(b"x" * 300), MalformedFrameError),
]


def test_hostile_inputs_close_only_their_connection(peers: list[Peer]) -> None:
    srv = Peer("srv", handshake_timeout=0.5, max_packet_size=1024 * 1024)
    good = Peer("good")
    peers += [srv, good]
    port = srv.listen()
    good.connect(port)

    def echo(conn_id: str, ident: str, message: Message) -> None:
        srv.messaging.send_message(ident, Message(message.data, ttl=None))

    srv.messaging.on_message_recv.add(echo)
    srv.start()
    good.start()
    good.wait_connected("srv")

    stop = threading.Event()
    sent: list[bytes] = []

    def chatter() -> None:  # the good peer keeps exchanging during the attack
        i = 0
        while not stop.is_set() and i < 100_000:
            n = len(good.rec.get("on_message_recv"))
            if n >= len(sent):
                data = b"msg %d" % i
                sent.append(data)
                good.send("srv", data, ttl=None)
                i += 1
            else:
                with good.rec.cond:
                    good.rec.cond.wait(0.5)

    talker = threading.Thread(target=chatter, daemon=True)
    talker.start()

    raws = []
    for _name, payload, _err in HOSTILE:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(payload)
        raws.append(raw)
    silent = socket.create_connection(("127.0.0.1", port))  # half handshake, then silence
    silent.sendall(VERSION)
    raws.append(silent)

    errors = srv.rec.wait_count("on_error", len(HOSTILE) + 1)
    kinds = sorted(type(e).__name__ for _c, e in errors)
    expected = sorted([e.__name__ for _n, _p, e in HOSTILE] + [HandshakeTimeoutError.__name__])
    assert kinds == expected
    for raw in raws:  # every hostile connection was closed by the listener
        raw.settimeout(WAIT)
        while raw.recv(65536):
            pass
        raw.close()

    before = len(good.rec.get("on_message_recv"))
    good.rec.wait_count("on_message_recv", before + 3)  # still exchanging
    stop.set()
    talker.join(WAIT)
    assert good.messaging.connected_idents().keys() == {"srv"}
    assert good.rec.get("on_disconnect") == [] and good.rec.get("on_error") == []
    got = good.received()
    assert got == sent[: len(got)]
    assert len(got) > 3


def _claim(ident: bytes, capable: bool) -> bytes:
    caps = encode_packet(Capabilities(CAP_ACK, 16).encode()) if capable else b""
    return VERSION + caps + ident_frame(ident)


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("capable", [True, False], ids=["capable", "legacy"])
def test_a_stranger_cannot_take_over_a_session_we_dialled(peers: list[Peer], capable: bool) -> None:
    # srv dialled aaa ("aaa" < "srv": a connection aaa dialled wins a crossed
    # dial). A stranger dials srv claiming to be aaa: it is refused, and aaa
    # keeps receiving what srv sends it.
    srv, aaa = Peer("srv", handshake_timeout=1.0), Peer("aaa")
    peers += [srv, aaa]
    srv_port, aaa_port = srv.listen(), aaa.listen()
    srv.connect(aaa_port)
    srv.start()
    aaa.start()
    srv.wait_connected("aaa")
    real = srv.messaging.connected_idents()["aaa"]
    with socket.create_connection(("127.0.0.1", srv_port)) as stranger:
        stranger.sendall(_claim(b"aaa", capable))
        for i in range(15):
            srv.send("aaa", b"for aaa %d" % i, ttl=None)
        aaa.rec.wait_count("on_message_recv", 15)
        heard = _read_until_closed(stranger)  # refused (legacy: at once; capable: at the deadline)
    assert b"for aaa" not in heard
    assert aaa.received() == [b"for aaa %d" % i for i in range(15)]
    errors = [e for _c, e in srv.rec.get("on_error")]
    assert any(isinstance(e, DuplicateIdentError) for e in errors), errors
    assert srv.messaging.connected_idents() == {"aaa": real}
    assert srv.rec.get("on_disconnect") == []


PING = struct.pack("!IB", 1, 4)


@pytest.mark.parametrize("identified", [True, False], ids=["identified", "before-identification"])
def test_a_ping_flood_that_never_reads_the_pongs_is_closed(
    peers: list[Peer], identified: bool
) -> None:
    srv = Peer("srv")
    peers.append(srv)
    port = srv.listen()
    srv.start()
    flooder = socket.socket()
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    flooder.settimeout(1.0)
    try:
        flooder.connect(("127.0.0.1", port))
        flooder.sendall(VERSION + (ident_frame(b"flooder") if identified else b""))
        burst = PING * 50_000
        for _ in range(400):  # 20 M pings at most
            if srv.rec.get("on_error"):
                break
            try:
                flooder.sendall(burst)
            except TimeoutError:
                continue
            except OSError:
                break  # closed by the server
    finally:
        flooder.close()
    (_conn, error), *_ = srv.rec.wait_count("on_error", 1)
    assert isinstance(error, SlowReaderError), error


@pytest.mark.parametrize("pings", [False, True], ids=["silent", "pings-but-never-reads"])
def test_a_peer_that_never_reads_is_closed_after_the_write_stall_timeout(
    peers: list[Peer], pings: bool
) -> None:
    # identified, never reads; silent with keepalive off, or pinging so that
    # keepalive (on, short) never fires: the write stall closes it
    srv = Peer("srv", write_stall_timeout=1.0)
    srv.messaging.keepalive_interval = 0.5 if pings else None
    peers.append(srv)
    port = srv.listen()
    srv.start()
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    reader.settimeout(WAIT)
    try:
        reader.connect(("127.0.0.1", port))
        reader.sendall(VERSION + ident_frame(b"sleeper"))
        srv.rec.wait_count("on_connect", 1)
        for _ in range(64):  # 16 MiB: more than the kernel buffers take
            srv.send("sleeper", b"x" * 256 * 1024, ttl=None)
        got = threading.Event()

        def pinger() -> None:
            while pings and not got.wait(0.2):
                try:
                    reader.send(PING)
                except OSError:
                    return

        thread = threading.Thread(target=pinger, daemon=True)
        thread.start()
        try:
            (_conn, error), *_ = srv.rec.wait_count("on_error", 1)
            srv.rec.wait_count("on_disconnect", 1)
        finally:
            got.set()
            thread.join(WAIT)
    finally:
        reader.close()
    assert isinstance(error, SlowReaderError) and "write_stall_timeout" in str(error), error


def test_an_unidentified_connection_may_send_only_handshake_sized_packets(
    peers: list[Peer],
) -> None:
    srv = Peer("srv")  # a header announcing 60 MB, then data: no buffering of it
    peers.append(srv)
    port = srv.listen()
    srv.start()
    with socket.create_connection(("127.0.0.1", port)) as big:
        big.sendall(VERSION + struct.pack("!IB", 60_000_000, 0x77) + b"x" * 300)
        (_conn, error), *_ = srv.rec.wait_count("on_error", 1)
        assert isinstance(error, PacketTooLargeError) and "identified" in str(error)
        assert _read_until_closed(big).startswith(VERSION)  # our hello, then closed


def test_beyond_max_unidentified_the_oldest_idle_connection_is_closed(
    peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    srv = Peer("srv", max_unidentified=4)  # the handshake timeout stays 30 s
    peers.append(srv)
    port = srv.listen()
    srv.start()
    idle: list[socket.socket] = []
    try:
        with caplog.at_level(logging.INFO, logger="snakemq.engine"):
            for _ in range(12):  # connect and say nothing
                idle.append(socket.create_connection(("127.0.0.1", port)))
            for sock in idle[:8]:  # the 8 oldest: our hello, then closed
                assert _read_until_closed(sock).startswith(VERSION)
            good = Peer("good")
            peers.append(good)
            good.connect(port)
            good.start()
            srv.rec.wait_count("on_connect", 1)
        # ours only (another library's warning is not this rule's)
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("snakemq")
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per streak
        assert "max_unidentified" in warnings[0].getMessage()
    finally:
        for sock in idle:
            sock.close()


def test_short_lived_identifiers_are_forgotten(peers: list[Peer]) -> None:
    # 200 peers, each a new identifier, connect and leave: nothing stays for
    # them; a peer with a queued message is remembered
    srv = Peer("srv")
    peers.append(srv)
    port = srv.listen()
    srv.start()
    srv.send("waited-for", b"queued", ttl=None)
    hello = VERSION + encode_packet(Capabilities(CAP_ACK, 16).encode())
    for i in range(200):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(hello + ident_frame(b"short%d" % i))
            sock.recv(100)
    srv.rec.wait_count("on_disconnect", 200)
    engine = srv.messaging.engine
    with srv.messaging.lock:
        assert set(engine._queues) == {"waited-for"}
        assert not engine._windows


def test_identifiers_cannot_forge_log_lines(
    peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    srv = Peer("srv")
    peers.append(srv)
    port = srv.listen()
    srv.start()
    forged = "x\n2026-01-01 CRITICAL root: forged"
    with caplog.at_level(logging.DEBUG), socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(VERSION + ident_frame(forged.encode()))
        (_conn, error), *_ = srv.rec.wait_count("on_error", 1)
        assert _read_until_closed(sock).startswith(VERSION)
    assert isinstance(error, MalformedFrameError) and "control" in str(error)
    assert srv.rec.get("on_connect") == []
    lines = [r.getMessage() for r in caplog.records]
    assert lines and not any("\n" in line for line in lines), lines
    assert any(repr(forged) in line for line in lines)
    with pytest.raises(ValueError, match="control"):
        srv.send("bad\x1b[2Jname", b"x")
