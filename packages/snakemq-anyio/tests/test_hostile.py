"""Hostile input over real loopback sockets: it closes only its own connection."""

from __future__ import annotations

import struct

import anyio
import pytest
from anyio_helpers import hello, read_until_closed
from snakemq_anyio import (
    DuplicateIdentError,
    ErrorOccurred,
    HandshakeTimeoutError,
    MalformedFrameError,
    Message,
    Messaging,
    PacketTooLargeError,
    UnexpectedFrameError,
)
from snakemq_proto import (
    MessageFrame,
    encode_packet,
)

pytestmark = pytest.mark.anyio


async def test_a_peer_that_never_identifies_is_closed() -> None:
    async with Messaging("alice", handshake_timeout=0.2) as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            async with await anyio.connect_tcp(host, port) as mute:
                with anyio.fail_after(10):
                    await read_until_closed(mute)  # alice's hello, then the close
                    event = await events.receive()
            assert isinstance(event, ErrorOccurred)
            assert isinstance(event.error, HandshakeTimeoutError)


HOSTILE = {
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PacketTooLargeError),
    "empty packet": (b"\x00\x00\x00\x00", MalformedFrameError),
    "message before hello": (
        encode_packet(MessageFrame(b"u" * 16, 5, 0, b"boo").encode()),
        UnexpectedFrameError,
    ),
    "duplicate ident": (hello("bob"), DuplicateIdentError),
    "truncated message": (
        hello("eve") + struct.pack("!I", 5) + b"\x03abcd",
        MalformedFrameError,
    ),
    "huge length": (struct.pack("!I", 0xFFFFFFFF) + b"x" * 100, PacketTooLargeError),
}


async def test_hostile_input_closes_only_that_connection() -> None:
    count = 2000
    async with (
        Messaging("alice", max_packet_size=1 << 20) as alice,
        Messaging("bob") as bob,
    ):
        with alice.events(max_buffered=10 * count) as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            await bob.add_connector((host, port))
            with anyio.fail_after(30):
                await alice.wait_connected("bob")

                async def exchange() -> None:
                    receipts = []
                    for i in range(count):
                        receipts.append(await bob.send_message("alice", Message(b"%d" % i, ttl=30)))
                        receipts.append(await alice.send_message("bob", Message(b"%d" % i, ttl=30)))
                        if i % 100 == 0:
                            await anyio.lowlevel.checkpoint()
                    got_a = [(await alice.receive())[1].data for _ in range(count)]
                    got_b = [(await bob.receive())[1].data for _ in range(count)]
                    assert got_a == got_b == [b"%d" % i for i in range(count)]
                    for receipt in receipts:
                        await receipt.delivered()

                async def attack(payload: bytes) -> None:
                    async with await anyio.connect_tcp(host, port) as stream:
                        await stream.send(payload)
                        await read_until_closed(stream)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(exchange)
                    for payload, _error in HOSTILE.values():
                        tg.start_soon(attack, payload)
                errors: list[type[BaseException]] = []
                while len(errors) < len(HOSTILE):
                    event = await events.receive()
                    if isinstance(event, ErrorOccurred):
                        errors.append(type(event.error))
                        assert event.ident != "bob" or isinstance(event.error, DuplicateIdentError)
            assert sorted(e.__name__ for e in errors) == sorted(
                e.__name__ for _p, e in HOSTILE.values()
            )
            assert alice.is_connected("bob")
            # bob is still the one identified as "bob": the impostor did not replace him
            await bob.send_message("alice", Message(b"still here", ttl=5))
            with anyio.fail_after(10):
                ident, message = await alice.receive()
                assert (ident, message.data) == ("bob", b"still here")
