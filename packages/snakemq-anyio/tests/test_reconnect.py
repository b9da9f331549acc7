"""Connectors: when they redial, over real loopback sockets."""

from __future__ import annotations

import anyio
import pytest
from snakemq_anyio import (
    Message,
    Messaging,
    PeerDisconnected,
)

pytestmark = pytest.mark.anyio


async def test_reconnect_after_listener_restarts() -> None:
    async with Messaging("bob", reconnect_interval=0.05, reconnect_max_interval=0.2) as bob:
        with bob.events() as events:
            async with Messaging("alice") as alice:
                _host, port = await alice.add_listener(("127.0.0.1", 0))
                await bob.add_connector(("127.0.0.1", port))
                with anyio.fail_after(10):
                    await bob.wait_connected("alice")
                    receipt = await bob.send_message("alice", Message(b"one", ttl=60))
                    assert (await alice.receive())[1].data == b"one"
                    await receipt.delivered()  # acknowledged once alice took it
            # alice is gone: bob notices, queues, and keeps trying to reconnect
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, PeerDisconnected):
                        break
            assert not bob.is_connected("alice")
            receipt = await bob.send_message("alice", Message(b"while away", ttl=60))
            async with Messaging("alice") as alice:
                assert await alice.add_listener(("127.0.0.1", port)) == ("127.0.0.1", port)
                with anyio.fail_after(10):
                    ident, message = await alice.receive()
                    assert (ident, message.data) == ("bob", b"while away")
                    await receipt.delivered()
                    await alice.send_message("bob", Message(b"and back", ttl=60))
                    assert (await bob.receive())[1].data == b"and back"


async def test_connector_retries_until_listener_appears() -> None:
    # find a free port, then listen on it only after the connector started
    async with Messaging("alice") as probe:
        _host, port = await probe.add_listener(("127.0.0.1", 0))
    async with Messaging("bob", reconnect_interval=0.02, reconnect_max_interval=0.1) as bob:
        await bob.add_connector(("127.0.0.1", port))
        receipt = await bob.send_message("alice", Message(b"early", ttl=None))
        async with Messaging("alice") as alice:
            await alice.add_listener(("127.0.0.1", port))
            with anyio.fail_after(10):
                assert (await alice.receive())[1].data == b"early"
                await receipt.delivered()
