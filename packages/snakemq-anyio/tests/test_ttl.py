"""TTL over real loopback sockets."""

from __future__ import annotations

import anyio
import pytest
from snakemq_anyio import (
    Message,
    MessageDropped,
    MessageDroppedError,
    Messaging,
    PeerDisconnected,
)

pytestmark = pytest.mark.anyio


async def test_ttl_drop_while_disconnected() -> None:
    async with Messaging("bob") as bob:
        with bob.events() as events:
            # never connected: dropped when the TTL runs out, reported both ways
            receipt = await bob.send_message("carol", Message(b"late", ttl=0.2))
            assert bob.queued("carol")
            with anyio.fail_after(10), pytest.raises(MessageDroppedError) as info:
                await receipt.delivered()
            assert info.value.uuid == receipt.uuid and info.value.ident == "carol"
            assert bob.queued("carol") == []
            with anyio.fail_after(10):
                event = await events.receive()
            assert isinstance(event, MessageDropped) and event.uuid == receipt.uuid
            # ttl=0 reaches only a peer connected right now
            now_only = await bob.send_message("carol", Message(b"now", ttl=0))
            with pytest.raises(MessageDroppedError):
                await now_only.delivered()


async def test_ttl_drop_after_peer_went_away() -> None:
    async with Messaging("bob") as bob:
        with bob.events() as events:
            async with Messaging("alice") as alice:
                _host, port = await alice.add_listener(("127.0.0.1", 0))
                connector = await bob.add_connector(("127.0.0.1", port))
                with anyio.fail_after(10):
                    await bob.wait_connected("alice")
            connector.cancel()
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, PeerDisconnected):
                        break
            receipt = await bob.send_message("alice", Message(b"short-lived", ttl=0.1))
            with anyio.fail_after(10), pytest.raises(MessageDroppedError):
                await receipt.delivered()
