"""Throttle (with Messaging on top) and send_message from many threads."""

from __future__ import annotations

import threading
import time

import pytest
from snakemq.link import Link
from snakemq.message import Message
from snakemq.packeter import Packeter
from snakemq.throttle import Throttle
from sync_helpers import WAIT, Peer, Recorder

RATE = 200_000  # bytes per second
PAYLOAD = 4000
WIRE = PAYLOAD + 29  # 4-byte length, type, uuid, ttl, flags


def test_throttle_holds_the_rate_within_20_percent(peers: list[Peer]) -> None:
    link = Link()
    throttle = Throttle(link, RATE)
    sender, receiver = Peer("sender", link=link, transport=throttle), Peer("receiver")
    peers += [sender, receiver]
    times: list[float] = []
    receiver.messaging.on_message_recv.add(lambda c, i, m: times.append(time.monotonic()))
    sender.connect(receiver.listen())
    sender.start()
    receiver.start()
    sender.wait_connected("receiver")
    count = 100  # about 2 s at RATE
    for _ in range(count):
        sender.send("receiver", b"x" * PAYLOAD, ttl=None)
    receiver.rec.wait_count("on_message_recv", count, timeout=WAIT * 2)
    rate = (count - 1) * WIRE / (times[-1] - times[0])
    assert RATE * 0.8 <= rate <= RATE * 1.2, f"throttled to {rate:.0f} B/s, wanted {RATE}"
    sender.rec.wait_count("on_message_delivered", count)


def test_throttle_rejects_bad_rate() -> None:
    link = Link()
    try:
        with pytest.raises(ValueError, match="bytes_per_second"):
            Throttle(link, 0)
        throttle = Throttle(link, 1000)
        assert throttle.reconnect_interval == link.reconnect_interval  # proxies the link
    finally:
        link.cleanup()


def test_send_message_from_many_threads_at_once(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    b.wait_connected("a")
    threads_n, per_thread = 8, 500
    barrier = threading.Barrier(threads_n)

    def produce(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            a.messaging.send_message("b", Message(b"%d %d" % (k, i), ttl=None))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    total = threads_n * per_thread
    b.rec.wait_count("on_message_recv", total)
    a.rec.wait_count("on_message_delivered", total)
    got = [tuple(map(int, d.split())) for d in b.received()]
    assert len(got) == total == len(set(got))
    for k in range(threads_n):  # each thread's messages arrive in its order
        assert [i for kk, i in got if kk == k] == list(range(per_thread))


def test_throttle_under_a_plain_packeter() -> None:
    server, client = Link(), Link()
    throttle = Throttle(client, 50_000)
    sp, cp = Packeter(server), Packeter(throttle)
    rec = Recorder()
    sp.on_packet_recv.add(rec.hook("packet"))
    cp.on_packet_sent.add(rec.hook("sent"))
    cp.on_connect.add(rec.hook("connect"))
    port = server.add_listener(("127.0.0.1", 0))[1]
    client.add_connector(("127.0.0.1", port))
    threads = [
        threading.Thread(target=link.loop, kwargs={"poll_timeout": 0.5}, daemon=True)
        for link in (server, client)
    ]
    for t in threads:
        t.start()
    try:
        ((conn,),) = rec.wait_count("connect", 1)
        ids: list[int] = []

        def send_once() -> None:
            client.on_loop_pass.remove(send_once)
            ids.extend(cp.send_packet(conn, bytes([i]) * 10_000) for i in range(5))

        client.on_loop_pass.add(send_once)
        client.wakeup_poll()
        packets = rec.wait_count("packet", 5)
        assert [p for _c, p in packets] == [bytes([i]) * 10_000 for i in range(5)]
        assert [i for _c, i in rec.wait_count("sent", 5)] == ids
    finally:
        for link in (server, client):
            link.stop()
        for t in threads:
            t.join(WAIT)
        server.cleanup()
        client.cleanup()
