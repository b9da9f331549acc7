"""Reconnects, TTL, keepalive and hostile input, over real loopback sockets."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import anyio
import pytest
from anyio.abc import ByteStream
from snakemq_anyio import (
    DuplicateIdentError,
    ErrorOccurred,
    EventStream,
    HandshakeTimeoutError,
    KeepaliveTimeoutError,
    MalformedFrameError,
    Message,
    MessageDropped,
    MessageDroppedError,
    Messaging,
    PacketTooLargeError,
    PeerConnected,
    PeerDisconnected,
    SlowReaderError,
    UnexpectedFrameError,
)
from snakemq_proto import (
    CAP_ACK,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WAIT,
    Capabilities,
    Identification,
    MessageFrame,
    PacketDecoder,
    Ping,
    Pong,
    ProtocolVersion,
    encode_packet,
)

pytestmark = pytest.mark.anyio


def _hello(ident: str) -> bytes:
    """A snakeMQ 1.6 handshake (no capabilities)."""
    return encode_packet(ProtocolVersion().encode()) + encode_packet(Identification(ident).encode())


async def _read_until_closed(stream: ByteStream) -> bytes:
    """Everything the remote side writes until it closes the connection."""
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return bytes(received)


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


async def test_keepalive_closes_a_silent_peer() -> None:
    async with Messaging("alice", keepalive_interval=0.1, keepalive_wait=0.1) as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            async with await anyio.connect_tcp(host, port) as silent:
                await silent.send(_hello("silent"))  # identifies, then never answers
                with anyio.fail_after(10):
                    received = await _read_until_closed(silent)
                    errors = []
                    async for event in events:
                        if isinstance(event, ErrorOccurred):
                            errors.append(event)
                        if isinstance(event, PeerDisconnected):
                            break
            assert encode_packet(Ping().encode()) in received
            assert [type(e.error) for e in errors] == [KeepaliveTimeoutError]
            assert errors[0].ident == "silent"
            assert not alice.is_connected("silent")


async def test_a_peer_that_never_identifies_is_closed() -> None:
    async with Messaging("alice", handshake_timeout=0.2) as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            async with await anyio.connect_tcp(host, port) as mute:
                with anyio.fail_after(10):
                    await _read_until_closed(mute)  # alice's hello, then the close
                    event = await events.receive()
            assert isinstance(event, ErrorOccurred)
            assert isinstance(event.error, HandshakeTimeoutError)


async def test_keepalive_keeps_a_peer_that_answers() -> None:
    async with Messaging("alice", keepalive_interval=0.05, keepalive_wait=1.0) as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0))
            async with await anyio.connect_tcp(host, port) as peer:
                await peer.send(_hello("answers"))
                decoder = PacketDecoder()
                pings = 0
                with anyio.fail_after(10):
                    while pings < 5:  # five keepalive rounds, each answered
                        for packet in decoder.feed(await peer.receive()):
                            if bytes(packet) == Ping().encode():
                                pings += 1
                                await peer.send(encode_packet(Pong().encode()))
                assert alice.is_connected("answers")
            while True:
                try:
                    event = events.receive_nowait()
                except anyio.WouldBlock:
                    break
                assert not isinstance(event, ErrorOccurred), event


HOSTILE = {
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PacketTooLargeError),
    "empty packet": (b"\x00\x00\x00\x00", MalformedFrameError),
    "message before hello": (
        encode_packet(MessageFrame(b"u" * 16, 5, 0, b"boo").encode()),
        UnexpectedFrameError,
    ),
    "duplicate ident": (_hello("bob"), DuplicateIdentError),
    "truncated message": (
        _hello("eve") + struct.pack("!I", 5) + b"\x03abcd",
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
                        await _read_until_closed(stream)

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


async def test_keepalive_is_on_by_default() -> None:
    # a dead peer must be noticed by a program that never set keepalive
    async with Messaging("alice") as alice:
        assert alice._engine.keepalive_interval == DEFAULT_KEEPALIVE_INTERVAL == 60.0
        assert alice._engine.keepalive_wait == DEFAULT_KEEPALIVE_WAIT == 10.0
        host, port = await alice.add_listener(("127.0.0.1", 0))
        async with await anyio.connect_tcp(host, port) as silent:
            await silent.send(_hello("silent"))  # identifies, then never answers
            with anyio.fail_after(10):
                await alice.wait_connected("silent")
            deadline = alice._engine.next_deadline()
            assert deadline is not None  # the ping is scheduled
            assert 0 < deadline - time.monotonic() <= DEFAULT_KEEPALIVE_INTERVAL


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
                    heard = await _read_until_closed(stranger)  # refused
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
                    await _read_until_closed(big)


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
                        await _read_until_closed(sock)
            assert isinstance(error, MalformedFrameError) and "control" in str(error)
            assert not srv.is_connected(forged)
        lines = [r.getMessage() for r in caplog.records]
        assert lines and not any("\n" in line for line in lines), lines
        assert any(repr(forged) in line for line in lines)
        with pytest.raises(ValueError, match="control"):
            await srv.send_message("bad\x1b[2Jname", Message(b"x"))
