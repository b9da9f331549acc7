"""Every callback of Messaging fires with the right arguments."""

from __future__ import annotations

import socket

import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.exceptions import PacketTooLargeError
from snakemq.message import Message
from sync_helpers import Peer, Recorder


def test_messaging_callbacks(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    b.wait_connected("a")
    a.wait_connected("b")
    ((a_conn, ident),) = a.rec.get("on_connect")
    assert ident == "b" and isinstance(a_conn, str) and a_conn in a.link.connections()
    ((b_conn, ident),) = b.rec.get("on_connect")
    assert ident == "a" and b_conn in b.link.connections()

    message = Message(b"payload", ttl=60, flags=0x10)
    b.messaging.send_message("a", message)
    ((conn, ident, got),) = a.rec.wait_count("on_message_recv", 1)
    assert (conn, ident) == (a_conn, "b")
    assert (got.data, got.uuid, got.flags, got.ttl) == (b"payload", message.uuid, 0x10, 60.0)
    assert b.rec.wait_count("on_message_sent", 1) == [(b_conn, "a", message.uuid)]
    assert b.rec.wait_count("on_message_delivered", 1) == [("a", message.uuid)]
    assert b.messaging.queued("a") == []

    dropped = Message(b"now or never", ttl=0)
    b.messaging.send_message("nobody", dropped)
    assert b.rec.wait_count("on_message_drop", 1) == [("nobody", dropped.uuid)]

    with socket.create_connection(("127.0.0.1", a.link.add_listener(("127.0.0.1", 0))[1])) as raw:
        raw.sendall(b"\xff\xff\xff\xff")
        ((conn, exc),) = a.rec.wait_count("on_error", 1)
        assert isinstance(conn, str) and conn != a_conn
        assert isinstance(exc, PacketTooLargeError)

    b.stop()
    peers.remove(b)
    assert a.rec.wait_count("on_disconnect", 1) == [(a_conn, "b")]


def test_raising_callback_is_logged_and_counts_as_handed(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    calls: list[bytes] = []

    def bad(conn_id: str, ident: str, message: Message) -> None:
        calls.append(message.data)
        raise RuntimeError("user bug")

    a.messaging.on_message_recv.callbacks.insert(0, bad)
    b.connect(a.listen())
    a.start()
    b.start()
    b.wait_connected("a")
    for i in range(5):
        b.send("a", b"%d" % i, ttl=None)
    # every message reaches the later callback too, and all are acknowledged
    a.rec.wait_count("on_message_recv", 5)
    assert calls == [b"0", b"1", b"2", b"3", b"4"]
    b.rec.wait_count("on_message_delivered", 5)
    assert b.messaging.queued("a") == []


def test_plain_function_assigned_as_callback_1_6_style(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    got: list[bytes] = []

    def on_recv(conn_id: str, ident: str, message: Message) -> None:
        got.append(message.data)
        if message.data == b"boom":
            raise ValueError("boom")

    a.messaging.on_message_recv = on_recv  # type: ignore[assignment]
    b.connect(a.listen())
    a.start()
    b.start()
    b.send("a", b"boom", ttl=None)
    b.send("a", b"after", ttl=None)
    ((_conn, exc),) = a.rec.wait_count("on_error", 1)
    assert isinstance(exc, ValueError)
    b.rec.wait_count("on_message_delivered", 2)
    assert got == [b"boom", b"after"]


def test_connections_that_come_and_go_leave_nothing_behind(peers: list[Peer]) -> None:
    import socket as socket_module

    srv = Peer("srv")
    peers.append(srv)
    port = srv.listen()
    srv.start()
    for i in range(30):
        with socket_module.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"\x00\x00\x00\x05\x00\x00\x00\x00\x01" + b"\x00\x00\x00\x04\x02p%02d" % i)
            srv.rec.wait_count("on_connect", i + 1)
        srv.rec.wait_count("on_disconnect", i + 1)
    srv.rec.wait(lambda: not srv.link._conns, what="no connection left in the link")
    assert srv.messaging._outs == {}
    assert srv.messaging.connected_idents() == {}
    assert srv.link.connections() == []


def test_messaging_takes_the_packeters_place_among_the_links_functions() -> None:
    # reads and finished sends go from the link straight to Messaging; functions
    # added to the link before and after the packeter keep their order around it
    link = snakemq.link.Link()
    try:
        first, last = Recorder().hook("first"), Recorder().hook("last")
        link.on_recv_view.add(first)
        link.on_ready_to_send.add(first)
        packeter = snakemq.packeter.Packeter(link)
        link.on_recv_view.add(last)
        link.on_ready_to_send.add(last)
        messaging = snakemq.messaging.Messaging("a", "", packeter)
        assert link.on_recv_view.callbacks == [first, messaging.stream_recv, last]
        assert link.on_ready_to_send.callbacks == [first, messaging.stream_ready, last]
    finally:
        link.cleanup()
