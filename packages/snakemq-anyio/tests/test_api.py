"""The public surface, argument checking and the lifecycle of a Messaging."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import pytest
import snakemq_anyio
from snakemq_anyio import (
    FLAG_PERSISTENT,
    Message,
    Messaging,
    MessagingClosedError,
    PeerConnected,
    SSLConfig,
)

pytestmark = pytest.mark.anyio


def test_public_surface() -> None:
    assert snakemq_anyio.__all__ == [
        "FLAG_PERSISTENT",
        "DeliveryError",
        "DuplicateIdentError",
        "ErrorOccurred",
        "EventStream",
        "HandshakeTimeoutError",
        "IdentityMismatchError",
        "IncompatibleProtocolError",
        "KeepaliveTimeoutError",
        "LeaseLostError",
        "MalformedFrameError",
        "MemoryQueuesStorage",
        "Message",
        "MessageDelivered",
        "MessageDropped",
        "MessageDroppedError",
        "MessageSent",
        "Messaging",
        "MessagingClosedError",
        "MessagingEvent",
        "PacketTooLargeError",
        "PeerConnected",
        "PeerDisconnected",
        "QueuesStorage",
        "ReadingPaused",
        "ReadingResumed",
        "Receipt",
        "RemoteProtocolError",
        "SSLConfig",
        "SlowReaderError",
        "SnakeMQError",
        "SqlAlchemyQueuesStorage",
        "SqliteQueuesStorage",
        "StorageError",
        "TLSHandshakeError",
        "UnexpectedFrameError",
    ]
    for name in snakemq_anyio.__all__:
        assert getattr(snakemq_anyio, name) is not None
    # the same classes as the protocol package: one SSLConfig, one Message
    import snakemq_proto

    assert snakemq_anyio.SSLConfig is snakemq_proto.SSLConfig
    assert snakemq_anyio.Message is snakemq_proto.Message


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"ident": "x" * 51}, ValueError, "ident"),
        ({"ident": 7}, TypeError, "ident"),
        ({"ident": "a", "keepalive_wait": -1}, ValueError, "keepalive_wait"),
        ({"ident": "a", "keepalive_interval": "1"}, ValueError, "keepalive_interval"),
        ({"ident": "a", "max_buffered": 0}, ValueError, "max_buffered"),
        ({"ident": "a", "max_queued": 0}, ValueError, "max_queued"),
        ({"ident": "a", "storage": 42}, TypeError, "storage"),
        ({"ident": "a", "max_packet_size": 10}, ValueError, "max_packet_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        Messaging(**kwargs)  # type: ignore[arg-type]


async def test_use_outside_the_context_is_refused() -> None:
    messaging = Messaging("alice")
    with pytest.raises(RuntimeError, match="async with"):
        await messaging.send_message("bob", Message(b"x"))
    with pytest.raises(RuntimeError, match="not started"):
        await messaging.add_listener(("127.0.0.1", 0))
    with pytest.raises(anyio.ClosedResourceError):
        await messaging.receive()
    async with messaging:
        with pytest.raises(TypeError, match="Message"):
            await messaging.send_message("bob", b"raw bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ident"):
            await messaging.send_message("", Message(b"x"))
        with pytest.raises(TypeError, match="address"):
            await messaging.add_listener("127.0.0.1:0")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="certfile"):
            await messaging.add_listener(("127.0.0.1", 0), SSLConfig(cert_reqs=ssl.CERT_NONE))
    with pytest.raises(RuntimeError, match="only once"):
        async with messaging:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        await messaging.send_message("bob", Message(b"x"))
    with pytest.raises(anyio.ClosedResourceError):
        await messaging.receive()


async def test_busy_port_raises_at_add_listener() -> None:
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        address = await alice.add_listener(("127.0.0.1", 0))
        with pytest.raises(OSError):
            await bob.add_listener(address)


async def test_remove_listener() -> None:
    async with Messaging("alice") as alice:
        address = await alice.add_listener(("127.0.0.1", 0))
        with anyio.fail_after(10):
            await alice.remove_listener(address)
        with pytest.raises(OSError):
            stream = await anyio.connect_tcp(*address)
            await stream.aclose()
        with pytest.raises(KeyError):
            await alice.remove_listener(address)


async def test_body_error_propagates_as_is() -> None:
    with pytest.raises(ZeroDivisionError):
        async with Messaging("alice") as alice:
            await alice.add_listener(("127.0.0.1", 0))
            _ = 1 / 0


async def test_closing_ends_receipts_receivers_and_event_streams() -> None:
    got_closed = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with Messaging("alice") as alice:
            receipt = await alice.send_message("nobody", Message(b"x", ttl=None))
            events = alice.events()

            async def waiting_receiver() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await alice.receive()
                got_closed.set()

            tg.start_soon(waiting_receiver)
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(10):
            await got_closed.wait()
            with pytest.raises(MessagingClosedError):
                await receipt.delivered()
            assert [event async for event in events] == []
            assert [m async for m in alice] == []


async def test_storage_given_as_a_path(tmp_path: Path) -> None:
    db = tmp_path / "alice.db"
    async with Messaging("alice", storage=db) as alice:
        await alice.send_message("bob", Message(b"kept", ttl=None, flags=FLAG_PERSISTENT))
        await alice.send_message("bob", Message(b"not kept", ttl=None))
    async with Messaging("alice", storage=str(db)) as alice, Messaging("bob") as bob:
        assert [m.data for m in alice.queued("bob")] == [b"kept"]
        with alice.events() as events:
            _host, port = await bob.add_listener(("127.0.0.1", 0))
            await alice.add_connector(("127.0.0.1", port))
            with anyio.fail_after(10):
                assert isinstance(await events.receive(), PeerConnected)
                assert (await bob.receive())[1].data == b"kept"


@pytest.mark.parametrize(
    "name", ["reconnect_interval", "reconnect_max_interval", "connect_timeout"]
)
def test_zero_seconds_are_refused_as_in_the_sync_package(name: str) -> None:
    # reconnect_interval=0 used to be accepted and would redial without delay
    with pytest.raises(ValueError, match=name):
        Messaging("a", **{name: 0})  # type: ignore[arg-type]


def test_defaults_are_the_shared_ones() -> None:
    import inspect

    import snakemq_proto

    defaults = {name: p.default for name, p in inspect.signature(Messaging).parameters.items()}
    assert defaults["keepalive_interval"] == snakemq_proto.DEFAULT_KEEPALIVE_INTERVAL == 60.0
    assert defaults["keepalive_wait"] == snakemq_proto.DEFAULT_KEEPALIVE_WAIT == 10.0
    assert defaults["reconnect_interval"] == snakemq_proto.DEFAULT_RECONNECT_INTERVAL
    assert defaults["reconnect_max_interval"] == snakemq_proto.DEFAULT_RECONNECT_MAX_INTERVAL
    assert defaults["connect_timeout"] == snakemq_proto.DEFAULT_CONNECT_TIMEOUT
    assert defaults["write_stall_timeout"] == snakemq_proto.DEFAULT_WRITE_STALL_TIMEOUT == 60.0
    assert defaults["max_unidentified"] == snakemq_proto.DEFAULT_MAX_UNIDENTIFIED == 512


async def test_addresses_are_checked_as_in_the_sync_package() -> None:
    async with Messaging("a") as messaging:
        with pytest.raises(TypeError, match=r"address\[1\] \(port\)"):
            await messaging.add_listener(("127.0.0.1", "0"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"0\.\.65535"):
            await messaging.add_listener(("127.0.0.1", 70000))
