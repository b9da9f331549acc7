"""Crossed dials over real loopback sockets."""

from __future__ import annotations

import anyio
import pytest
from snakemq_anyio import (
    DuplicateIdentError,
    ErrorOccurred,
    Message,
    Messaging,
    PeerConnected,
)

pytestmark = pytest.mark.anyio

CROSSED_RECONNECT = 0.02
QUIET_WINDOW = 1.0  # without the hold, some 40 refused dials would fit in here


async def test_crossed_dials_settle_and_the_losing_connector_waits() -> None:
    """Bob and jack dial each other (the tutorial's mesh): they settle on one
    connection, the connector whose dial lost stops dialling while it lives
    (RedialHeld), and redials at once when it ends."""
    fast = CROSSED_RECONNECT
    async with (
        Messaging("bob", reconnect_interval=fast, reconnect_max_interval=fast) as bob,
        Messaging("jack", reconnect_interval=fast, reconnect_max_interval=fast) as jack,
    ):
        seen: list[object] = []
        changed = anyio.Event()

        async def watch(peer: Messaging) -> None:
            nonlocal changed
            with peer.events() as events:
                async for event in events:
                    seen.append(event)
                    changed.set()
                    changed = anyio.Event()

        def connects() -> list[PeerConnected]:
            return [e for e in seen if isinstance(e, PeerConnected)]

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, bob)
            tg.start_soon(watch, jack)
            await anyio.lowlevel.checkpoint()
            _host, bob_port = await bob.add_listener(("127.0.0.1", 0))
            _host, jack_port = await jack.add_listener(("127.0.0.1", 0))
            await bob.add_connector(("127.0.0.1", jack_port))
            await jack.add_connector(("127.0.0.1", bob_port))

            def refused() -> list[ErrorOccurred]:
                return [
                    e
                    for e in seen
                    if isinstance(e, ErrorOccurred) and isinstance(e.error, DuplicateIdentError)
                ]

            with anyio.fail_after(10):
                await bob.wait_connected("jack")
                await jack.wait_connected("bob")
            before = len(refused())
            await anyio.sleep(QUIET_WINDOW)  # an observation window: nothing may happen in it
            # settling may still refuse one dial (seen by both sides); after that
            # nobody dials, where without the hold ~40 dials would be refused
            assert len(refused()) - before <= 2, refused()
            assert bob.is_connected("jack") and jack.is_connected("bob")

            # the kept connection ends: the held connector redials at once
            before = len(connects())
            jack.disconnect("bob")
            with anyio.fail_after(10):
                while len(connects()) < before + 2:  # both sides connected anew
                    await changed.wait()
                await bob.wait_connected("jack")
                await jack.wait_connected("bob")
                await jack.send_message("bob", Message(b"after the redial", ttl=None))
                assert (await bob.receive())[1].data == b"after the redial"
            tg.cancel_scope.cancel()
