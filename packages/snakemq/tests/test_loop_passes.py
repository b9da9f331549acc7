"""A hop costs one loop pass: what a callback sends is written, and reported
sent, in the pass that received what it answers (DESIGN.md).

Two peers over real TCP on one thread, each loop driven one pass with I/O at a
time (``loop(count=1)``), so the passes of each side can be counted exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
from snakemq.link import Link
from snakemq.message import Message
from snakemq.messaging import Messaging
from snakemq.packeter import Packeter

ROUND_TRIPS = 20


class _Side:
    def __init__(self, ident: str, **options: Any) -> None:
        self.link = Link()
        self.messaging = Messaging(ident, "", Packeter(self.link), **options)
        self.passes = 0  # passes finished (on_loop_pass)
        self.started = 0  # passes started: the link asks its deadline hooks first
        self.log: list[tuple[str, int, bytes]] = []  # (what, pass started, data)
        self.link.on_loop_pass.add(self._count)
        self.link.add_deadline_hook(self._start)

    def _count(self) -> None:
        self.passes += 1

    def _start(self) -> None:
        # a deadline hook returns the next deadline; None: none
        self.started += 1


def _pair(**b_options: Any) -> tuple[_Side, _Side]:
    a, b = _Side("a"), _Side("b", **b_options)
    _, port = b.link.add_listener(("127.0.0.1", 0))
    a.link.add_connector(("127.0.0.1", port))
    connected: list[str] = []
    a.messaging.on_connect.add(lambda conn_id, ident: connected.append(ident))
    for _ in range(500):
        a.link.loop(runtime=0.01)
        b.link.loop(runtime=0.01)
        if connected:
            break
    assert connected == ["b"]
    for _ in range(3):  # let the handshake settle on both sides
        a.link.loop(runtime=0.01)
        b.link.loop(runtime=0.01)
    return a, b


@pytest.fixture
def pair() -> Any:
    a, b = _pair()
    yield a, b
    a.link.cleanup()
    b.link.cleanup()


def test_a_reply_is_written_and_reported_sent_in_the_pass_that_received_the_request(
    pair: tuple[_Side, _Side],
) -> None:
    a, b = pair
    uuids: dict[bytes, bytes] = {}  # uuid of b's answer -> its data

    def answer(conn_id: str, ident: str, message: Message) -> None:
        b.log.append(("recv", b.started, message.data))
        reply = Message(message.data, ttl=60)
        uuids[reply.uuid] = message.data
        b.messaging.send_message(ident, reply)

    def ping(n: int) -> None:
        a.messaging.send_message("b", Message(b"ping %d" % n, ttl=60))

    def next_ping(conn_id: str, ident: str, message: Message) -> None:
        a.log.append(("recv", a.started, message.data))
        if len(a.log) < ROUND_TRIPS:
            ping(len(a.log))

    b.messaging.on_message_recv.add(answer)
    b.messaging.on_message_sent.add(
        lambda conn_id, ident, uuid: b.log.append(("sent", b.started, uuids[uuid]))
    )
    a.messaging.on_message_recv.add(next_ping)
    ping(0)
    a.link.loop(runtime=0.05)  # a writes the first ping
    for i in range(ROUND_TRIPS):
        b_before, a_before = b.passes, a.passes
        b.link.loop(count=1)  # b reads the ping and answers it
        a.link.loop(count=1)  # a reads the answer (written in b's pass), pings again
        # one pass per hop: no second pass to report the write, none for the wake-up
        assert b.passes - b_before == 1, f"round trip {i}: b took {b.passes - b_before} passes"
        assert a.passes - a_before == 1, f"round trip {i}: a took {a.passes - a_before} passes"
    pings = [b"ping %d" % n for n in range(ROUND_TRIPS)]
    recv = [(p, data) for what, p, data in b.log if what == "recv"]
    sent = [(p, data) for what, p, data in b.log if what == "sent"]
    assert [data for _, data in recv] == pings
    # each answer reported sent in the very pass that received its request
    assert sent == recv
    assert [data for _, _, data in a.log] == pings


def test_sent_then_settled_in_order_towards_a_legacy_peer_over_many_batches() -> None:
    """Toward a 1.6 peer a message is settled once written: writes that follow
    one another in the same pass keep order and report every message once."""
    a, b = _pair(legacy=True)
    try:
        events: list[tuple[str, bytes]] = []
        a.messaging.on_message_sent.add(lambda c, i, uuid: events.append(("sent", uuid)))
        a.messaging.on_message_settled.add(lambda i, uuid: events.append(("settled", uuid)))
        received: list[bytes] = []
        b.messaging.on_message_recv.add(lambda c, i, m: received.append(m.data))
        messages = [Message(b"%05d" % n + b"x" * 2000, ttl=60) for n in range(300)]
        for message in messages:
            a.messaging.send_message("b", message)
        for _ in range(2000):
            if len(received) == len(messages) and len(events) == 2 * len(messages):
                break
            a.link.loop(runtime=0.002)
            b.link.loop(runtime=0.002)
        assert received == [m.data for m in messages]
        expected: list[tuple[str, bytes]] = []
        for message in messages:
            expected += [("sent", message.uuid), ("settled", message.uuid)]
        assert events == expected
    finally:
        a.link.cleanup()
        b.link.cleanup()


def test_a_wakeup_asked_for_during_a_pass_costs_no_empty_pass() -> None:
    """What send_message does from a callback (``wakeup_poll`` before the
    pass's ``on_loop_pass``) is answered by that pass: the next ``select``
    waits as usual instead of making an empty pass."""
    server, client = Link(), Link()
    try:
        conns: dict[str, str] = {}
        server.on_connect.add(lambda conn_id: conns.setdefault("server", conn_id))
        client.on_connect.add(lambda conn_id: conns.setdefault("client", conn_id))
        _, port = server.add_listener(("127.0.0.1", 0))
        client.add_connector(("127.0.0.1", port))
        for _ in range(500):
            if len(conns) == 2:
                break
            client.loop(runtime=0.01)
            server.loop(runtime=0.01)
        assert len(conns) == 2
        received: list[bytes] = []

        def on_recv(conn_id: str, data: bytes) -> None:
            received.append(data)
            server.wakeup_poll()

        server.on_recv.add(on_recv)
        passes: list[None] = []
        server.on_loop_pass.add(lambda: passes.append(None))
        client.send(conns["client"], b"question")
        # the pass that reads, then one select that waits until the runtime ends
        server.loop(poll_timeout=30.0, runtime=0.5)
        assert b"".join(received) == b"question"
        assert len(passes) == 2
    finally:
        server.cleanup()
        client.cleanup()
