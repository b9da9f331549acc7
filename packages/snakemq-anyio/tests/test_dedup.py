"""De-duplication over real sockets: a resend after a reconnect is handed once;
a peer gone longer than ``dedup_linger`` stops costing memory."""

from __future__ import annotations

import os

import anyio
import pytest
from snakemq_anyio import Messaging, PeerDisconnected
from snakemq_proto import PacketDecoder
from snakemq_proto.testing import acked, capable_peer_bytes

pytestmark = pytest.mark.anyio


async def _send_and_wait_ack(port: int, ident: str, uuids: list[bytes]) -> None:
    """A capable peer ``ident`` sends a message per uuid, waits for the ack of
    the last one, and leaves."""
    decoder = PacketDecoder()
    async with await anyio.connect_tcp("127.0.0.1", port) as sock:
        await sock.send(capable_peer_bytes(ident, uuids))
        while not acked(decoder, await sock.receive(), uuids[-1]):
            pass


async def _receive_all(srv: Messaging, into: list[bytes]) -> None:
    while True:
        _ident, message = await srv.receive()
        into.append(message.data)


async def test_a_resend_after_a_reconnect_is_not_handed_twice() -> None:
    received: list[bytes] = []
    async with Messaging("srv") as srv, anyio.create_task_group() as tg:
        _host, port = await srv.add_listener(("127.0.0.1", 0))
        tg.start_soon(_receive_all, srv, received)
        first, second = os.urandom(16), os.urandom(16)
        with srv.events() as events, anyio.fail_after(15):
            await _send_and_wait_ack(port, "p", [first])
            async for event in events:
                if isinstance(event, PeerDisconnected):
                    break
            await _send_and_wait_ack(port, "p", [first, second])  # its ack was "lost"
        assert received == [first, second]
        tg.cancel_scope.cancel()


async def test_gone_peers_windows_are_forgotten_after_dedup_linger() -> None:
    received: list[bytes] = []
    async with Messaging("srv") as srv, anyio.create_task_group() as tg:
        engine = srv._engine
        engine.dedup_linger = 0.3
        _host, port = await srv.add_listener(("127.0.0.1", 0))
        tg.start_soon(_receive_all, srv, received)
        with srv.events() as events, anyio.fail_after(15):
            for i in range(50):
                await _send_and_wait_ack(port, f"short{i}", [os.urandom(16)])
            gone = 0
            async for event in events:
                gone += isinstance(event, PeerDisconnected)
                if gone == 50:
                    break
            while engine._windows:  # the timer task forgets them 0.3 s after
                await anyio.sleep(0.05)
        assert len(received) == 50
        assert not engine._windows and not engine._queues and not engine._gone
        tg.cancel_scope.cancel()
