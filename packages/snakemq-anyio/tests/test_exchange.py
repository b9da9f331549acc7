"""Two peers over real loopback TCP, in both directions."""

from __future__ import annotations

import anyio
import pytest
from snakemq_anyio import (
    Message,
    MessageDelivered,
    MessageSent,
    Messaging,
    PeerConnected,
    PeerDisconnected,
)

pytestmark = pytest.mark.anyio


async def test_two_peers_exchange_both_ways() -> None:
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        host, port = await alice.add_listener(("127.0.0.1", 0))
        assert port > 0
        await bob.add_connector((host, port))
        with anyio.fail_after(10):
            await bob.wait_connected("alice")
            await alice.wait_connected("bob")
            r1 = await bob.send_message("alice", Message(b"hello alice", ttl=60))
            r2 = await alice.send_message("bob", Message(b"hello bob", ttl=60))
            ident, message = await alice.receive()
            assert (ident, message.data) == ("bob", b"hello alice")
            ident, message = await bob.receive()
            assert (ident, message.data) == ("alice", b"hello bob")
            await r1.delivered()
            await r2.delivered()
        assert r1.done and r1.error is None


async def test_many_messages_in_order_and_events() -> None:
    count = 5000
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        with bob.events(max_buffered=3 * count) as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            await bob.add_connector(("127.0.0.1", port))
            with anyio.fail_after(20):
                await bob.wait_connected("alice")
                receipts = [
                    await bob.send_message("alice", Message(b"%d" % i, ttl=None))
                    for i in range(count)
                ]
                got: list[bytes] = []
                async for ident, message in alice:
                    assert ident == "bob"
                    got.append(message.data)
                    if len(got) == count:
                        break
                assert got == [b"%d" % i for i in range(count)]
                for receipt in receipts:
                    await receipt.delivered()
                first = await events.receive()
                assert isinstance(first, PeerConnected) and first.ident == "alice"
                sent = delivered = 0
                while delivered < count:
                    event = await events.receive()
                    if isinstance(event, MessageSent):
                        sent += 1
                    elif isinstance(event, MessageDelivered):
                        delivered += 1
                assert sent == count
        async with alice.events() as alice_events:
            bob.disconnect("alice")
            with anyio.fail_after(10):
                event = await alice_events.receive()
            assert isinstance(event, PeerDisconnected) and event.ident == "bob"


async def test_receive_batch_and_nowait() -> None:
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        _host, port = await alice.add_listener(("127.0.0.1", 0))
        await bob.add_connector(("127.0.0.1", port))
        with pytest.raises(anyio.WouldBlock):
            alice.receive_nowait()
        with anyio.fail_after(10):
            await bob.wait_connected("alice")
            receipts = [await bob.send_message("alice", Message(b"x", ttl=5)) for _ in range(100)]
            got = await alice.receive_batch(10)
            assert 1 <= len(got) <= 10
            while len(got) < 100:
                try:
                    got.append(alice.receive_nowait())
                except anyio.WouldBlock:
                    got.extend(await alice.receive_batch())
            assert alice.buffered == 0
            for receipt in receipts:
                await receipt.delivered()


async def test_clean_exit_acknowledges_what_was_taken() -> None:
    async with Messaging("bob") as bob:
        async with Messaging("alice") as alice:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            await bob.add_connector(("127.0.0.1", port))
            with anyio.fail_after(10):
                receipt = await bob.send_message("alice", Message(b"last words", ttl=None))
                assert (await alice.receive())[1].data == b"last words"
        # alice left right after taking it: her exit still acknowledged it
        with anyio.fail_after(10):
            await receipt.delivered()
        assert bob.queued("alice") == []


async def test_peer_connected_event_names_legacy_peer() -> None:
    async with Messaging("alice") as alice, Messaging("old", legacy=True) as old:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            await old.add_connector(("127.0.0.1", port))
            with anyio.fail_after(10):
                event = await events.receive()
                assert isinstance(event, PeerConnected) and event.legacy
                # a 1.6 peer sends no acks: delivered() means completely written
                receipt = await alice.send_message("old", Message(b"to legacy", ttl=5))
                await receipt.delivered()
                assert (await old.receive())[1].data == b"to legacy"
                receipt = await old.send_message("alice", Message(b"from legacy", ttl=5))
                await receipt.delivered()
                assert (await alice.receive())[1].data == b"from legacy"
