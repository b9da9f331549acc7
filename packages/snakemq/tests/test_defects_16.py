"""Regression tests for the snakeMQ 1.6 defects listed in ARCHITECTURE.md.

Defects covered elsewhere: packet size limit and zero-length packet
(test_hostile), callback exceptions (test_callbacks), send_message from
another thread with SQLite (test_persistence), Throttle + Messaging
(test_throttle_threads), IPv6/back-off/connect errors/runtime overrun/
wake-up pipe (test_link), getpeercert and identity binding (test_tls).
"""

from __future__ import annotations

import socket
import struct
import time

from snakemq.exceptions import KeepaliveTimeoutError
from snakemq.message import Message
from snakemq.messaging import ReceiveHook
from sync_helpers import WAIT, Peer

VERSION = struct.pack("!IBI", 5, 0, 1)


def ident_frame(ident: bytes) -> bytes:
    return struct.pack("!IB", len(ident) + 1, 2) + ident


def test_message_stays_queued_until_acknowledged_and_is_not_delivered_twice(
    peers: list[Peer],
) -> None:
    """1.6 removed a message before its bytes reached the socket; a reset then
    lost it although on_message_sent had fired."""
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    closed_once: list[str] = []

    def cut_before_ack(conn_id: str, ident: str, message: Message) -> None:
        if not closed_once:  # the connection dies before the ack can leave
            closed_once.append(conn_id)
            b.link.close(conn_id)

    b.messaging.on_message_recv.add(cut_before_ack)
    a.start()
    b.start()
    b.wait_connected("a")
    m = a.send("b", b"must survive", ttl=None)
    a.rec.wait_count("on_disconnect", 1)
    a.rec.wait_count("on_message_delivered", 1)  # resent after the reconnect, acked
    assert b.received() == [b"must survive"]  # the resent copy was a duplicate
    assert a.rec.get("on_message_delivered") == [("b", m.uuid)]
    assert a.messaging.queued("b") == []


def test_keepalive_closing_several_silent_peers_at_once(peers: list[Peer]) -> None:
    """1.6: RuntimeError: dictionary changed size during iteration."""
    srv = Peer("srv")
    peers.append(srv)
    srv.messaging.keepalive_interval = 0.1
    srv.messaging.keepalive_wait = 0.1
    port = srv.listen()
    srv.start()
    zombies = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for i, z in enumerate(zombies):
            z.sendall(VERSION + ident_frame(b"zombie%d" % i))
        errors = srv.rec.wait_count("on_error", 5)
        assert all(isinstance(e, KeepaliveTimeoutError) for _c, e in errors)
        srv.rec.wait_count("on_disconnect", 5)
    finally:
        for z in zombies:
            z.close()
    assert srv.loop_error is None


def test_receive_hook_adds_instead_of_replacing(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    hook = ReceiveHook(a.messaging)
    routed: list[tuple[str, bytes]] = []
    hook.register(b"cmd:", lambda c, i, m: routed.append(("cmd", m.data)))
    hook.register("data:.*", lambda c, i, m: routed.append(("data", m.data)))
    b.connect(a.listen())
    a.start()
    b.start()
    for data in (b"cmd:go", b"data:1", b"other"):
        b.send("a", data, ttl=None)
    a.rec.wait_count("on_message_recv", 3)  # the recorder added before still runs
    b.rec.wait_count("on_message_delivered", 3)
    assert routed == [("cmd", b"cmd:go"), ("data", b"data:1")]
    hook.unregister(b"cmd:")
    hook.clear()


def test_peer_disconnecting_during_a_large_send_does_not_hang_the_loop(
    peers: list[Peer],
) -> None:
    """1.6 self-deadlocked when a peer went away while a send was in progress."""
    a, c = Peer("a"), Peer("c")
    peers += [a, c]
    port = a.listen()
    c.connect(port)
    a.start()
    c.start()
    a.wait_connected("c")
    with socket.create_connection(("127.0.0.1", port)) as victim:
        victim.sendall(VERSION + ident_frame(b"victim"))
        a.rec.wait(lambda: "victim" in a.messaging.connected_idents(), what="victim up")
        for _ in range(40):
            a.send("victim", b"v" * 1_000_000, ttl=None)
        victim.recv(1000)  # the transfer is under way
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # closed with a reset in the middle of the transfer
    a.rec.wait(
        lambda: any(i == "victim" for _c, i in a.rec.calls.get("on_disconnect", [])),
        what="victim disconnected",
    )
    a.send("c", b"still alive", ttl=None)
    c.rec.wait_count("on_message_recv", 1)
    # a legacy peer (no acknowledgements): a message leaves the queue exactly
    # when its packet was completely written, and not before
    sent = [u for _c, i, u in a.rec.get("on_message_sent") if i == "victim"]
    assert len(a.messaging.queued("victim")) + len(sent) == 40
    assert len(a.messaging.queued("victim")) > 0


def test_small_messages_are_not_delayed_by_nagle(peers: list[Peer]) -> None:
    """1.6 lacked TCP_NODELAY: a burst of small messages stalled ~40 ms."""
    a, b = Peer("a"), Peer("b")
    peers += [a, b]

    def echo(conn_id: str, ident: str, message: Message) -> None:
        b.messaging.send_message(ident, Message(message.data, ttl=None))

    b.messaging.on_message_recv.add(echo)
    b.connect(a.listen())
    a.start()
    b.start()
    a.wait_connected("b")
    rounds = 30
    start = time.monotonic()
    for i in range(rounds):
        a.send("b", b"%d" % i, ttl=None)
        a.rec.wait_count("on_message_recv", i + 1)
    took = time.monotonic() - start
    assert took < rounds * 0.03, f"{rounds} round trips took {took:.2f} s"
    assert took < WAIT
