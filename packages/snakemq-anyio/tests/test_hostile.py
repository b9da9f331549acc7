"""Hostile input over real loopback sockets: it closes only its own connection."""

from __future__ import annotations

import logging
import socket
import struct
import threading

import anyio
import pytest
from anyio_helpers import hello, read_until_closed
from snakemq_anyio import (
    DuplicateIdentError,
    ErrorOccurred,
    EventStream,
    HandshakeTimeoutError,
    MalformedFrameError,
    Message,
    Messaging,
    PacketTooLargeError,
    PeerDisconnected,
    SlowReaderError,
    UnexpectedFrameError,
)
from snakemq_proto import (
    CAP_ACK,
    Capabilities,
    Identification,
    MessageFrame,
    Ping,
    ProtocolVersion,
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


@pytest.mark.parametrize("capable", [True, False], ids=["capable", "legacy"])
async def test_a_stranger_cannot_take_over_a_session_we_dialled(capable: bool) -> None:
    # srv dialled aaa ("aaa" < "srv": a connection aaa dialled wins a crossed
    # dial). A stranger dials srv claiming to be aaa: it is refused, and aaa
    # keeps receiving what srv sends it.
    async with (
        Messaging("srv", handshake_timeout=1.0) as srv,
        Messaging("aaa") as aaa,
    ):
        with srv.events() as events:
            host, srv_port = await srv.add_listener(("127.0.0.1", 0))
            _host, aaa_port = await aaa.add_listener(("127.0.0.1", 0))
            await srv.add_connector(("127.0.0.1", aaa_port))
            with anyio.fail_after(10):
                await srv.wait_connected("aaa")
            async with await anyio.connect_tcp(host, srv_port) as stranger:
                hello = encode_packet(ProtocolVersion().encode())
                if capable:
                    hello += encode_packet(Capabilities(CAP_ACK, 16).encode())
                await stranger.send(hello + encode_packet(Identification("aaa").encode()))
                with anyio.fail_after(10):
                    for i in range(15):
                        await srv.send_message("aaa", Message(b"for aaa %d" % i, ttl=None))
                    got = [(await aaa.receive())[1].data for _ in range(15)]
                    heard = await read_until_closed(stranger)  # refused
            assert got == [b"for aaa %d" % i for i in range(15)]
            assert b"for aaa" not in heard
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait())
                except anyio.WouldBlock:
                    break
        assert any(
            isinstance(e, ErrorOccurred) and isinstance(e.error, DuplicateIdentError) for e in seen
        )
        assert not [e for e in seen if isinstance(e, PeerDisconnected)]
        assert srv.is_connected("aaa")


async def _first_error(events: EventStream) -> BaseException:
    with anyio.fail_after(20):
        async for event in events:
            if isinstance(event, ErrorOccurred):
                return event.error
    raise AssertionError("no error reported")


@pytest.mark.parametrize("identified", [True, False], ids=["identified", "before-identification"])
async def test_a_ping_flood_that_never_reads_the_pongs_is_closed(identified: bool) -> None:
    async with Messaging("alice") as alice:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            flooder = socket.socket()
            flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            flooder.settimeout(1.0)
            stop = threading.Event()

            def flood() -> None:
                flooder.connect(("127.0.0.1", port))
                hello = encode_packet(ProtocolVersion().encode())
                if identified:
                    hello += encode_packet(Identification("flooder").encode())
                flooder.sendall(hello)
                burst = encode_packet(Ping().encode()) * 50_000
                for _ in range(400):  # 20 M pings at most
                    if stop.is_set():
                        return
                    try:
                        flooder.sendall(burst)
                    except TimeoutError:
                        continue
                    except OSError:
                        return  # closed by alice

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, flood)
                    try:
                        assert isinstance(await _first_error(events), SlowReaderError)
                    finally:
                        stop.set()
            finally:
                flooder.close()


@pytest.mark.parametrize("pings", [False, True], ids=["silent", "pings-but-never-reads"])
async def test_a_peer_that_never_reads_is_closed_after_the_write_stall_timeout(
    pings: bool,
) -> None:
    # identified, never reads; silent with keepalive off, or pinging so that
    # keepalive (on, short) never fires: the write stall closes it
    keepalive = 0.5 if pings else None
    async with Messaging("alice", keepalive_interval=keepalive, write_stall_timeout=1.0) as alice:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0))
            reader = socket.socket()
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
            reader.settimeout(10)
            stop = threading.Event()

            def sleeper() -> None:
                reader.connect(("127.0.0.1", port))
                hello = encode_packet(ProtocolVersion().encode())
                reader.sendall(hello + encode_packet(Identification("sleeper").encode()))
                while pings and not stop.wait(0.2):
                    try:
                        reader.send(encode_packet(Ping().encode()))
                    except OSError:
                        return

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, sleeper)
                    try:
                        for _ in range(64):  # 16 MiB: more than the kernel buffers take
                            await alice.send_message(
                                "sleeper", Message(b"x" * 256 * 1024, ttl=None)
                            )
                        error = await _first_error(events)
                        assert isinstance(error, SlowReaderError), error
                        assert "write_stall_timeout" in str(error)
                        with anyio.fail_after(10):
                            async for event in events:
                                if isinstance(event, PeerDisconnected):
                                    break
                        assert not alice.is_connected("sleeper")
                    finally:
                        stop.set()
            finally:
                reader.close()


async def test_an_unidentified_connection_may_send_only_handshake_sized_packets() -> None:
    async with Messaging("alice") as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            async with await anyio.connect_tcp(host, port) as big:
                announce = struct.pack("!IB", 60_000_000, 0x77) + b"x" * 300
                await big.send(encode_packet(ProtocolVersion().encode()) + announce)
                error = await _first_error(events)
                assert isinstance(error, PacketTooLargeError) and "identified" in str(error)
                with anyio.fail_after(10):
                    await read_until_closed(big)


async def test_beyond_max_unidentified_the_oldest_idle_connection_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Messaging("alice", max_unidentified=4) as alice:  # handshake timeout 30 s
        host, port = await alice.add_listener(("127.0.0.1", 0))
        idle = []
        try:
            with caplog.at_level(logging.INFO, logger="snakemq.engine"):
                for _ in range(12):  # connect and say nothing
                    idle.append(await anyio.connect_tcp(host, port))
                with anyio.fail_after(10):
                    for stream in idle[:8]:  # the 8 oldest: our hello, then closed
                        assert (await read_until_closed(stream)).startswith(
                            encode_packet(ProtocolVersion().encode())
                        )
                async with Messaging("good") as good:
                    await good.add_connector((host, port))
                    with anyio.fail_after(10):
                        await alice.wait_connected("good")
            # ours only: asyncio's debug mode (PYTHONDEVMODE, as tox runs) warns of slow callbacks
            warnings = [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("snakemq")
            ]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per streak
            assert "max_unidentified" in warnings[0].getMessage()
        finally:
            for stream in idle:
                await stream.aclose()


async def test_short_lived_identifiers_are_forgotten() -> None:
    # 200 peers, each a new identifier, connect and leave: nothing stays for
    # them; a peer with a queued message is remembered
    async with Messaging("srv") as srv:
        with srv.events() as events:
            host, port = await srv.add_listener(("127.0.0.1", 0))
            await srv.send_message("waited-for", Message(b"queued", ttl=None))
            hello = encode_packet(ProtocolVersion().encode())
            hello += encode_packet(Capabilities(CAP_ACK, 16).encode())
            with anyio.fail_after(30):
                for i in range(200):
                    async with await anyio.connect_tcp(host, port) as sock:
                        await sock.send(hello + encode_packet(Identification(f"s{i}").encode()))
                        await sock.receive()
                gone = 0
                async for event in events:
                    gone += isinstance(event, PeerDisconnected)
                    if gone == 200:
                        break
        assert set(srv._engine._queues) == {"waited-for"}
        assert not srv._engine._windows


async def test_identifiers_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    forged = "x\n2026-01-01 CRITICAL root: forged"
    async with Messaging("srv") as srv:
        with srv.events() as events:
            host, port = await srv.add_listener(("127.0.0.1", 0))
            with caplog.at_level(logging.DEBUG):
                async with await anyio.connect_tcp(host, port) as sock:
                    hello = encode_packet(ProtocolVersion().encode())
                    await sock.send(hello + encode_packet(b"\x02" + forged.encode()))
                    error = await _first_error(events)
                    with anyio.fail_after(10):
                        await read_until_closed(sock)
            assert isinstance(error, MalformedFrameError) and "control" in str(error)
            assert not srv.is_connected(forged)
        lines = [r.getMessage() for r in caplog.records]
        assert lines and not any("\n" in line for line in lines), lines
        assert any(repr(forged) in line for line in lines)
        with pytest.raises(ValueError, match="control"):
            await srv.send_message("bad\x1b[2Jname", Message(b"x"))
