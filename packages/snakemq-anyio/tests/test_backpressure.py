"""Backpressure and cancellation safety, over real loopback sockets."""

from __future__ import annotations

import gc
import random

import anyio
import anyio.abc
import pytest
from snakemq_anyio import (
    MemoryQueuesStorage,
    Message,
    MessageSent,
    Messaging,
    ReadingPaused,
    Receipt,
)
from snakemq_proto import MessageReceived
from snakemq_proto.testing import capable_peer_bytes

pytestmark = pytest.mark.anyio

COUNT = 100_000


async def test_window_stops_a_capable_sender_while_the_receiver_does_not_read() -> None:
    window = 100
    # max_queued=None: bob may queue all 100,000 at once; only the window holds him
    async with (
        Messaging("alice", window=window) as alice,
        Messaging("bob", max_queued=None) as bob,
    ):
        with bob.events(max_buffered=3 * COUNT) as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            await bob.add_connector(("127.0.0.1", port))
            with anyio.fail_after(60):
                await bob.wait_connected("alice")
                payload = b"p" * 100
                receipts = [
                    await bob.send_message("alice", Message(payload + b"%d" % i, ttl=None))
                    for i in range(COUNT)
                ]
                sent = 0
                while sent < window:  # the window is written, then bob must stop
                    if isinstance(await events.receive(), MessageSent):
                        sent += 1
                # nothing is acknowledged while alice does not take messages
                assert len(bob.queued("alice")) == COUNT
                assert alice.buffered <= window
                most = 0
                for i in range(COUNT):
                    most = max(most, alice.buffered)
                    _ident, message = await alice.receive()
                    assert message.data == payload + b"%d" % i
                assert most <= window
                await receipts[-1].delivered()
                assert bob.queued("alice") == []


async def test_full_buffer_stops_reading_a_legacy_sender() -> None:
    # a snakeMQ 1.6 peer has no window: only the bounded buffer and TCP stop it
    limit = 1000
    payload = b"q" * 200
    chunk_messages = 262144 // (len(payload) + 29) + 1  # what one socket read may add
    bound = limit + chunk_messages
    async with (
        Messaging("alice", max_buffered=limit) as alice,
        Messaging("old", legacy=True, max_queued=None) as old,
    ):
        with alice.events(max_buffered=COUNT) as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            await old.add_connector(("127.0.0.1", port))
            with anyio.fail_after(60):
                await old.wait_connected("alice")
                for i in range(COUNT):
                    await old.send_message("alice", Message(payload + b"%d" % i, ttl=None))
                async for event in events:
                    if isinstance(event, ReadingPaused):
                        break
                assert limit <= alice.buffered <= bound
                assert len(old.queued("alice")) > 0  # the sender is held back
                most = 0
                for i in range(COUNT):
                    most = max(most, alice.buffered)
                    _ident, message = await alice.receive()
                    assert message.data == payload + b"%d" % i
                assert most <= bound


async def test_send_waits_while_a_connected_peer_lags() -> None:
    async with Messaging("alice") as alice, Messaging("bob", max_queued=100) as bob:
        _host, port = await alice.add_listener(("127.0.0.1", 0))
        await bob.add_connector(("127.0.0.1", port))
        with anyio.fail_after(10):
            await bob.wait_connected("alice")
            for i in range(100):
                await bob.send_message("alice", Message(b"%d" % i, ttl=None))
        sent = anyio.Event()

        async def send_one_more() -> None:
            await bob.send_message("alice", Message(b"100", ttl=None))
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_one_more)
            # alice takes nothing, so bob's 101st send must not return
            with anyio.move_on_after(0.3):
                await sent.wait()
            assert not sent.is_set()
            with anyio.fail_after(10):
                for i in range(50):  # half of them delivered: bob may go on
                    assert (await alice.receive())[1].data == b"%d" % i
                await sent.wait()
        # a peer that is not connected does not pace: its queue is bounded by TTL
        with anyio.fail_after(10):
            for _ in range(300):
                await bob.send_message("carol", Message(b"later", ttl=60))
        assert len(bob.queued("carol")) == 300


async def test_cancelled_sends_lose_nothing() -> None:
    total = 3000
    async with (
        Messaging("alice") as alice,
        Messaging("bob", storage=MemoryQueuesStorage()) as bob,
    ):
        _host, port = await alice.add_listener(("127.0.0.1", 0))
        await bob.add_connector(("127.0.0.1", port))
        returned: list[int] = []
        with anyio.fail_after(60):
            await bob.wait_connected("alice")
            async with anyio.create_task_group() as tg:
                sender_scope = anyio.CancelScope()

                async def sender() -> None:
                    with sender_scope:
                        for i in range(total):
                            # persistent: each send awaits its storage batch
                            await bob.send_message("alice", Message(b"%d" % i, ttl=None, flags=1))
                            returned.append(i)

                tg.start_soon(sender)
                got: list[int] = []
                while len(got) < 1000:
                    got.append(int((await alice.receive())[1].data))
                sender_scope.cancel()  # somewhere in the middle of a send
            assert 0 < len(returned) < total
            # bob is still usable; the marker is queued after everything before it
            marker = await bob.send_message("alice", Message(b"end", ttl=None))
            while True:
                data = (await alice.receive())[1].data
                if data == b"end":
                    break
                got.append(int(data))
            await marker.delivered()
        # every send that returned is delivered, once, in order; the interrupted
        # one (queued before the cancel hit it) may be there too
        assert got == list(range(len(got)))
        assert len(returned) <= len(got) <= len(returned) + 1


async def test_cancelled_receives_lose_nothing() -> None:
    total = 5000
    rng = random.Random(4)
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        _host, port = await alice.add_listener(("127.0.0.1", 0))
        await bob.add_connector(("127.0.0.1", port))
        with anyio.fail_after(60):
            await bob.wait_connected("alice")
            receipts: list[Receipt] = []
            got: list[bytes] = []
            cancelled = 0
            scope = anyio.CancelScope()
            done = anyio.Event()

            async def canceller() -> None:
                while not done.is_set():
                    await anyio.lowlevel.checkpoint()
                    if rng.random() < 0.3:
                        scope.cancel()

            async def sender() -> None:
                for i in range(total):
                    receipts.append(await bob.send_message("alice", Message(b"%d" % i, ttl=None)))
                    if i % 50 == 0:
                        await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(canceller)
                tg.start_soon(sender)
                while len(got) < total:
                    scope = anyio.CancelScope()
                    with scope:
                        if rng.random() < 0.5:
                            got.append((await alice.receive())[1].data)
                        else:
                            got.extend(m.data for _i, m in await alice.receive_batch(7))
                    if scope.cancel_called and not scope.cancelled_caught:
                        pass
                    elif scope.cancelled_caught:
                        cancelled += 1
                done.set()
            assert cancelled > 0
            assert got == [b"%d" % i for i in range(total)]
            for receipt in receipts:
                await receipt.delivered()  # taken means acknowledged
            # still usable in both directions
            await alice.send_message("bob", Message(b"after", ttl=None))
            assert (await bob.receive())[1].data == b"after"


async def _raw_peers(port: int, peers: int, each: int) -> list[anyio.abc.SocketStream]:
    """``peers`` raw capable peers that each send ``each`` messages at once."""
    socks = []
    for i in range(peers):
        sock = await anyio.connect_tcp("127.0.0.1", port)
        uuids = [bytes([i, j]) * 8 for j in range(each)]
        await sock.send(capable_peer_bytes(f"raw{i}", uuids))
        socks.append(sock)
    return socks


async def test_a_full_inbox_holds_other_connections_bytes_undecoded() -> None:
    # 20 connections each send 50 messages while nobody reads: the first
    # reader fills the inbox (16); the others must not decode 50 more each
    peers, each, high = 20, 50, 16
    async with Messaging("srv", max_buffered=high) as srv:
        with srv.events() as events:
            _host, port = await srv.add_listener(("127.0.0.1", 0))
            socks = await _raw_peers(port, peers, each)
            try:
                with anyio.fail_after(15):
                    paused = set()
                    async for event in events:
                        if isinstance(event, ReadingPaused):
                            paused.add(event.conn_id)
                            if len(paused) == peers:
                                break
                assert len(srv._inbox) <= high + each  # one reader's chunk beyond the mark
                with anyio.fail_after(15):
                    for _ in range(peers * each):  # and nothing is lost
                        await srv.receive()
            finally:
                for sock in socks:
                    await sock.aclose()


async def test_messages_taken_by_the_application_are_not_kept_by_readers() -> None:
    peers, each = 20, 50
    async with Messaging("srv") as srv:
        _host, port = await srv.add_listener(("127.0.0.1", 0))
        socks = await _raw_peers(port, peers, each)
        try:
            with anyio.fail_after(15):
                for _ in range(peers * each):
                    await srv.receive()
            gc.collect()
            alive = sum(type(o) is MessageReceived for o in gc.get_objects())
            # a reader waiting for its next bytes held its last chunk's events
            # (with 400 peers: every message received, after they were taken)
            assert alive == 0
        finally:
            for sock in socks:
                await sock.aclose()
