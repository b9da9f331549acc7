"""The public surface: 1.6 names, re-exports, module contents."""

from __future__ import annotations

import snakemq
import snakemq.callbacks
import snakemq.exceptions
import snakemq.link
import snakemq.message
import snakemq.messaging
import snakemq.packeter
import snakemq.storage
import snakemq.storage.sqlite
import snakemq.throttle
import snakemq.version
import snakemq_proto
from snakemq.message import Message
from sync_helpers import Peer


def test_public_names() -> None:
    assert snakemq.__all__ == ["__version__", "init", "init_logging"]
    assert snakemq.link.SSLConfig is snakemq_proto.SSLConfig
    assert snakemq.message.Message is snakemq_proto.Message
    assert snakemq.message.FLAG_PERSISTENT == 1
    assert snakemq.message.MAX_UUID_LENGTH == 16
    assert snakemq.storage.MemoryQueuesStorage is snakemq_proto.MemoryQueuesStorage
    assert snakemq.storage.sqlite.SqliteQueuesStorage is snakemq_proto.SqliteQueuesStorage
    for name in ("Link", "LinkSocket", "SSLConfig", "RECONNECT_INTERVAL", "POLL_TIMEOUT"):
        assert hasattr(snakemq.link, name), name
    assert {"Messaging", "ReceiveHook"} <= set(snakemq.messaging.__all__)
    assert callable(snakemq.packeter.Packeter) and callable(snakemq.throttle.Throttle)
    assert callable(snakemq.callbacks.Callback)
    assert snakemq.version.PROTOCOL_VERSION == 1
    assert snakemq.__version__ == snakemq.version.VERSION


def test_1_6_exception_names_are_aliases() -> None:
    e = snakemq.exceptions
    assert e.SnakeMQException is snakemq_proto.SnakeMQError
    assert issubclass(e.SnakeMQBrokenPacket, e.SnakeMQBrokenFormat)
    assert issubclass(e.SnakeMQBrokenMessage, e.SnakeMQException)
    assert issubclass(e.NoConnection, e.SnakeMQException)
    assert issubclass(e.SendNotFinished, e.SnakeMQException)
    for name in e.__all__:
        assert getattr(e, name)


def test_messaging_keeps_the_1_6_attributes() -> None:
    link = snakemq.link.Link()
    try:
        packeter = snakemq.packeter.Packeter(link)
        m = snakemq.messaging.Messaging("me", "domain", packeter)
        assert (m.identifier, m.domain, m.packeter) == ("me", "domain", packeter)
        # keepalive is on by default (1.6 had it off): a dead peer is noticed
        assert m.keepalive_interval == 60.0 and m.keepalive_wait == 10.0
        m.keepalive_interval = 5
        m.keepalive_wait = 1
        assert (m.keepalive_interval, m.keepalive_wait) == (5, 1)
        # a peer that does not read is closed (the shared default)
        assert m.write_stall_timeout == snakemq_proto.DEFAULT_WRITE_STALL_TIMEOUT == 60.0
        m.write_stall_timeout = None
        assert m.write_stall_timeout is None
        import pytest

        with pytest.raises(ValueError, match="Messaging"):
            snakemq.messaging.Messaging("other", "", packeter)
    finally:
        link.cleanup()


def test_bad_arguments_name_the_argument(peers: list[Peer]) -> None:
    import pytest

    a = Peer("a")
    peers.append(a)
    with pytest.raises(TypeError, match="message"):
        a.messaging.send_message("b", b"raw bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ident"):
        a.messaging.send_message("x" * 51, Message(b"x"))
    with pytest.raises(TypeError, match="data"):
        Message("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        Message(b"x", ttl=-1)
    with pytest.raises(ValueError, match="keepalive_interval"):
        a.messaging.keepalive_interval = 0
    link = snakemq.link.Link()
    try:
        with pytest.raises(ValueError, match="ident"):
            snakemq.messaging.Messaging("y" * 51, "", snakemq.packeter.Packeter(link))
    finally:
        link.cleanup()


def test_addresses_are_checked_as_in_the_anyio_package() -> None:
    import pytest
    from snakemq.link import Link

    link = Link()
    try:
        with pytest.raises(TypeError, match=r"address\[1\] \(port\)"):
            link.add_listener(("127.0.0.1", "0"))
        with pytest.raises(ValueError, match=r"0\.\.65535"):
            link.add_connector(("127.0.0.1", 70000))
        with pytest.raises(ValueError, match="reconnect_interval"):
            link.add_connector(("127.0.0.1", 1), reconnect_interval=0)
        port = link.add_listener(["127.0.0.1", 0])[1]  # type: ignore[arg-type]  # a list, as anyio takes
        assert port > 0
    finally:
        link.cleanup()
