"""Link and Packeter on their own, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import snakemq
from snakemq.callbacks import Callback
from snakemq.exceptions import NoConnection, PacketTooLargeError, SendNotFinished
from snakemq.link import Link
from snakemq.packeter import Packeter
from sync_helpers import WAIT, Recorder


class LoopThread:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.thread = threading.Thread(target=link.loop, kwargs={"poll_timeout": 0.5}, daemon=True)

    def __enter__(self) -> Link:
        self.thread.start()
        return self.link

    def __exit__(self, *exc: object) -> None:
        self.link.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def links() -> Iterator[list[Link]]:
    made: list[Link] = []
    yield made
    for link in made:
        link.cleanup()


def recorded_link(rec: Recorder, name: str) -> Link:
    link = Link()
    link.reconnect_interval = 0.05
    link.on_connect.add(rec.hook(f"{name}.connect"))
    link.on_disconnect.add(rec.hook(f"{name}.disconnect"))
    link.on_recv.add(rec.hook(f"{name}.recv"))
    link.on_ready_to_send.add(rec.hook(f"{name}.ready"))
    return link


def test_link_callbacks_and_port_zero(links: list[Link]) -> None:
    rec = Recorder()
    server, client = recorded_link(rec, "s"), recorded_link(rec, "c")
    links += [server, client]
    passes: list[None] = []
    server.on_loop_pass.add(lambda: passes.append(None))
    host, port = server.add_listener(("127.0.0.1", 0))
    assert host == "127.0.0.1" and port > 0
    client.add_connector(("127.0.0.1", port))
    client_loop = LoopThread(client)
    with LoopThread(server), client_loop:
        ((s_conn,),) = rec.wait_count("s.connect", 1)
        ((c_conn,),) = rec.wait_count("c.connect", 1)
        assert isinstance(s_conn, str) and isinstance(c_conn, str)
        client.send(c_conn, b"hello")  # the loop is in another thread: send is not
        assert rec.wait_count("c.ready", 1) == [(c_conn, 5)]  # thread-safe in general,
        rec.wait(lambda: b"".join(a[1] for a in rec.get("s.recv")) == b"hello")  # fine here
        assert passes
        conn = client.get_socket_by_conn(c_conn)
        assert conn.getpeercert() is None  # plain TCP
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client_loop.__exit__()
        client.cleanup()
        assert rec.wait_count("c.disconnect", 1) == [(c_conn,)]
        assert rec.wait_count("s.disconnect", 1) == [(s_conn,)]


def test_send_before_ready_raises_and_unknown_conn() -> None:
    link = Link()
    try:
        with pytest.raises(NoConnection):
            link.send("nope", b"x")
        link.close("nope")  # closing an unknown id is harmless
        a, b = socket.socketpair()
        b.close()
        a.close()
    finally:
        link.cleanup()
    assert issubclass(SendNotFinished, Exception)


def test_ipv6_and_host_names(links: list[Link]) -> None:
    if not socket.has_ipv6:  # pragma: no cover
        pytest.fail("the machine has no IPv6; the test needs [::1]")
    rec = Recorder()
    server, client6, client_name = (
        recorded_link(rec, "s"),
        recorded_link(rec, "c6"),
        recorded_link(rec, "cn"),
    )
    links += [server, client6, client_name]
    port = server.add_listener(("", 0))[1]  # every interface, both families
    v6_host, v6_port = server.add_listener(("::1", 0))
    named_host, named_port = server.add_listener(("localhost", 0))
    assert (v6_host, named_host) == ("::1", "127.0.0.1")
    client6.add_connector(("::1", port))
    client6.add_connector(("::1", v6_port))
    client_name.add_connector(("localhost", port))
    client_name.add_connector(("127.0.0.1", named_port))
    with LoopThread(server), LoopThread(client6), LoopThread(client_name):
        rec.wait_count("c6.connect", 2)
        rec.wait_count("cn.connect", 2)
        rec.wait_count("s.connect", 4)


def test_connect_errors_never_escape_loop_and_back_off(
    links: list[Link], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = Link()
    links.append(link)
    link.reconnect_interval = 0.01
    link.reconnect_max_interval = 0.08
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there: refused
    link.add_connector(("127.0.0.1", port))
    link.add_connector(("unresolvable.test", 1))  # resolution fails (patched below)
    link.add_connector(("255.255.255.255", 9))  # EACCES from connect(), no packet sent
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "unresolvable.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    start = time.monotonic()
    link.loop(poll_timeout=2.0, runtime=0.5)
    took = time.monotonic() - start
    assert 0.5 <= took < 1.0  # runtime is never overrun by a poll timeout
    for key in (("127.0.0.1", port), ("unresolvable.test", 1), ("255.255.255.255", 9)):
        # 0.01, 0.02, 0.04, 0.08, 0.08 ... s apart (± jitter): a handful of tries,
        # not the 50 a fixed 0.01 s interval would make
        assert 3 <= link._connectors[key].failures <= 12


def test_runtime_not_overrun_by_long_poll_timeout() -> None:
    link = Link()
    try:
        start = time.monotonic()
        link.loop(poll_timeout=5.0, runtime=0.2)
        assert time.monotonic() - start < 1.0
    finally:
        link.cleanup()


def test_wakeup_poll_never_blocks_without_loop() -> None:
    link = Link()
    try:
        for _ in range(200_000):  # 1.6 blocked forever at the 65,536th call
            link.wakeup_poll()
        link.loop(count=1, poll_timeout=0.01, runtime=0.05)
    finally:
        link.cleanup()


def test_wakeup_poll_interrupts_a_long_poll() -> None:
    link = Link()
    about_to_poll = threading.Event()

    def hook() -> None:  # called right before select()
        about_to_poll.set()

    link.add_deadline_hook(hook)
    thread = threading.Thread(target=link.loop, kwargs={"poll_timeout": 30.0}, daemon=True)
    thread.start()
    try:
        assert about_to_poll.wait(WAIT)
        t0 = time.monotonic()
        link.stop()
        thread.join(5.0)
        assert not thread.is_alive()
        assert time.monotonic() - t0 < 2.0
    finally:
        link.cleanup()


def test_count_counts_passes_with_events(links: list[Link]) -> None:
    link = Link()
    links.append(link)
    start = time.monotonic()
    link.loop(poll_timeout=0.01, count=1, runtime=0.3)  # no events: runs until runtime
    assert time.monotonic() - start >= 0.3


def test_packeter_packets_ids_errors_zero_length(links: list[Link]) -> None:
    rec = Recorder()
    server, client = Link(), Link()
    links += [server, client]
    client.reconnect_interval = 0.05
    sp, cp = Packeter(server, max_packet_size=1024), Packeter(client)
    for name, p in (("s", sp), ("c", cp)):
        p.on_connect.add(rec.hook(f"{name}.connect"))
        p.on_disconnect.add(rec.hook(f"{name}.disconnect"))
        p.on_packet_recv.add(rec.hook(f"{name}.packet"))
        p.on_packet_sent.add(rec.hook(f"{name}.sent"))
        p.on_error.add(rec.hook(f"{name}.error"))
    port = server.add_listener(("127.0.0.1", 0))[1]
    client.add_connector(("127.0.0.1", port))
    with LoopThread(server), LoopThread(client):
        ((c_conn,),) = rec.wait_count("c.connect", 1)
        ((s_conn,),) = rec.wait_count("s.connect", 1)
        ids: list[int] = []
        done = threading.Event()

        def send_all() -> None:  # send from the loop thread (Packeter is not thread-safe)
            client.on_loop_pass.remove(send_all)
            ids.extend(cp.send_packet(c_conn, d) for d in (b"one", b"", b"x" * 1000))
            done.set()

        client.on_loop_pass.add(send_all)
        client.wakeup_poll()
        assert done.wait(WAIT)
        assert ids == sorted(ids) and len(set(ids)) == 3
        got = rec.wait_count("s.packet", 3)
        assert got[:3] == [(s_conn, b"one"), (s_conn, b""), (s_conn, b"x" * 1000)]
        assert sorted(rec.wait_count("c.sent", 3)) == [(c_conn, i) for i in ids]

        # a packet over the limit: on_error, then only this connection closes
        def too_big() -> None:
            cp.send_packet(c_conn, b"y" * 2000)
            client.on_loop_pass.remove(too_big)

        client.on_loop_pass.add(too_big)
        client.wakeup_poll()
        ((conn, exc),) = rec.wait_count("s.error", 1)
        assert conn == s_conn and isinstance(exc, PacketTooLargeError)
        assert rec.wait_count("s.disconnect", 1) == [(s_conn,)]
        # the connector reconnects
        rec.wait_count("c.connect", 2)


def test_send_packet_argument_errors(links: list[Link]) -> None:
    link = Link()
    links.append(link)
    p = Packeter(link)
    with pytest.raises(TypeError, match="buf"):
        p.send_packet("x", "text")  # type: ignore[arg-type]
    with pytest.raises(NoConnection):
        p.send_packet("x", b"data")


def test_callback_keeps_calling_after_exception() -> None:
    cb: Callback[[int]] = Callback()
    seen: list[int] = []

    def bad(x: int) -> None:
        raise RuntimeError(x)

    cb.add(bad)
    cb.add(seen.append)
    cb(3)
    assert seen == [3] and len(cb) == 2
    cb.remove(bad)
    assert len(cb) == 1


@pytest.mark.parametrize("functions", [1, 2])
def test_a_raising_function_on_the_hot_callbacks_is_logged_and_the_loop_goes_on(
    links: list[Link], caplog: pytest.LogCaptureFixture, functions: int
) -> None:
    """``on_recv_view``, ``on_ready_to_send`` and ``on_loop_pass`` are called
    inline when they hold one function: its exception is logged under
    ``snakemq.callbacks`` as ``Callback`` does, and never escapes ``loop()``."""
    server, client = Link(), Link()
    links += [server, client]
    calls: list[str] = []

    def bad(name: str) -> Any:
        def raiser(*args: object) -> None:
            calls.append(name)
            raise RuntimeError(f"{name} bug")

        return raiser

    for cb, name in (
        (server.on_recv_view, "view"),
        (client.on_ready_to_send, "ready"),
        (client.on_loop_pass, "pass"),
    ):
        for _ in range(functions):
            cb.add(bad(name))
    conns: list[str] = []
    client.on_connect.add(conns.append)
    port = server.add_listener(("127.0.0.1", 0))[1]
    client.add_connector(("127.0.0.1", port))
    deadline = time.monotonic() + WAIT
    with caplog.at_level("ERROR", logger="snakemq.callbacks"):
        while not conns and time.monotonic() < deadline:
            client.loop(poll_timeout=0.01, runtime=0.01)
            server.loop(poll_timeout=0.01, runtime=0.01)
        for _ in range(2):
            client.send(conns[0], b"x")
            while calls.count("view") < functions * (2 if _ else 1):
                assert time.monotonic() < deadline
                client.loop(poll_timeout=0.01, runtime=0.01)
                server.loop(poll_timeout=0.01, runtime=0.01)
    assert calls.count("ready") == 2 * functions  # the loop went on after each
    assert calls.count("view") == 2 * functions
    assert calls.count("pass") >= 2 * functions
    logged = {r.getMessage().split(" raised")[0] for r in caplog.records}
    assert len(logged) == 3 * functions  # each function named in the log
    assert all(r.name == "snakemq.callbacks" and r.exc_info for r in caplog.records)


def test_init_is_harmless_and_logging(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import sys

    snakemq.init()
    snakemq.init()
    logger = logging.getLogger("snakemq")
    level, handlers = logger.level, list(logger.handlers)
    try:
        snakemq.init_logging(sys.stderr)
        snakemq.init_logging(sys.stderr)
        assert len(logger.handlers) == len(handlers) + 1  # replaced, not added twice
        logging.getLogger("snakemq.link").warning("visible")
        assert "visible" in capsys.readouterr().err
    finally:
        for h in logger.handlers[:]:
            if h not in handlers:
                logger.removeHandler(h)
        logger.setLevel(level)


def test_count_stops_after_passes_with_io_and_stop_from_callback(links: list[Link]) -> None:
    server, client = Link(), Link()
    links += [server, client]
    port = server.add_listener(("127.0.0.1", 0))[1]
    client.add_connector(("127.0.0.1", port))
    server.on_connect.add(lambda conn_id: server.send(conn_id, b"greeting"))
    connected: list[str] = []
    received: list[bytes] = []
    client.on_connect.add(connected.append)
    client.on_connect.add(lambda conn_id: client.stop())  # stop() from inside the loop
    client.on_recv.add(lambda conn_id, data: received.append(data))
    server_thread = threading.Thread(target=server.loop, kwargs={"poll_timeout": 0.5})
    server_thread.start()
    try:
        client.loop(poll_timeout=0.5, runtime=WAIT)
        assert len(connected) == 1
        start = time.monotonic()
        client.loop(poll_timeout=0.5, count=1, runtime=WAIT)  # one pass with I/O: the greeting
        assert b"".join(received) == b"greeting"
        assert time.monotonic() - start < WAIT / 2
    finally:
        server.stop()
        server_thread.join(WAIT)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_on_recv_gets_bytes_to_keep_and_on_recv_view_a_view_of_the_reused_buffer(
    links: list[Link], transport: str, tmp_path: Any
) -> None:
    """The link reads into one buffer it reuses: ``on_recv_view`` sees views of
    it (valid during the call), ``on_recv`` gets ``bytes`` of its own; both see
    the whole stream, also when it is many times the buffer's size."""
    import trustme
    from test_tls import config

    ssl_server = ssl_client = None
    if transport == "tls":
        ca = trustme.CA()
        ssl_server, ssl_client = config(tmp_path, ca, "srv"), config(tmp_path, ca, "cli")
    server, client = Link(), Link()
    links += [server, client]
    server.recv_block_size = 4096
    payload = bytes(range(256)) * 1024  # 256 KiB: 64 buffers' worth
    rec = Recorder()
    record_view = rec.hook("view")

    def on_view(conn_id: str, view: memoryview) -> None:
        # what a view-taker must do: use or copy it before returning
        record_view(type(view), len(view), id(view.obj), view.tobytes())

    server.on_recv.add(rec.hook("recv"))
    server.on_recv_view.add(on_view)
    port = server.add_listener(("127.0.0.1", 0), ssl_config=ssl_server)[1]
    client.add_connector(("127.0.0.1", port), ssl_config=ssl_client)
    client.on_connect.add(lambda conn_id: client.send(conn_id, payload))
    with LoopThread(server), LoopThread(client):
        rec.wait(lambda: sum(c[1] for c in rec.calls.get("view", [])) >= len(payload))
        rec.wait(lambda: sum(len(c[1]) for c in rec.calls.get("recv", [])) >= len(payload))
    views, kept = rec.get("view"), rec.get("recv")
    assert b"".join(c[3] for c in views) == payload
    assert b"".join(c[1] for c in kept) == payload
    assert {c[0] for c in views} == {memoryview} and max(c[1] for c in views) <= 4096
    assert len({c[2] for c in views}) == 1  # one buffer, reused for every read
    assert {type(c[1]) for c in kept} == {bytes}


def test_a_burst_of_connects_is_queued_by_the_kernel_not_dropped(links: list[Link]) -> None:
    # Before the loop accepts anything, 600 clients connect: the listen
    # backlog holds them all (128 made every connect beyond it wait for a
    # 1 s SYN retransmit, and churn crawled). Then every one is served.
    rec = Recorder()
    server = recorded_link(rec, "s")
    links.append(server)
    _host, port = server.add_listener(("127.0.0.1", 0))
    clients: list[socket.socket] = []
    try:
        for _ in range(600):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        with LoopThread(server):
            rec.wait_count("s.connect", 600)
    finally:
        for sock in clients:
            sock.close()
