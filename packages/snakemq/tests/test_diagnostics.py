"""Setup mistakes, told in words that name the address or argument and the fix."""

from __future__ import annotations

import errno
import logging

import pytest
import snakemq.link
from snakemq.message import FLAG_PERSISTENT, Message
from sync_helpers import Peer


def test_busy_port_names_the_address(peers: list[Peer]) -> None:
    holder = Peer("holder")
    peers.append(holder)
    port = holder.listen()
    link = snakemq.link.Link()
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}: .*pick another"):
            link.add_listener(("127.0.0.1", port))
    finally:
        link.cleanup()


def test_busy_port_keeps_its_errno(peers: list[Peer]) -> None:
    holder = Peer("holder")
    peers.append(holder)
    port = holder.listen()
    link = snakemq.link.Link()
    try:
        with pytest.raises(OSError) as info:
            link.add_listener(("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        link.cleanup()


def test_persistent_without_storage_warns_once(
    peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    alice = Peer("alice")
    peers.append(alice)
    with caplog.at_level(logging.WARNING, logger="snakemq.messaging"):
        for _ in range(3):
            alice.messaging.send_message("bob", Message(b"x", ttl=60, flags=FLAG_PERSISTENT))
    warned = [r for r in caplog.records if "FLAG_PERSISTENT" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].name == "snakemq.messaging" and warned[0].levelno == logging.WARNING
    assert "'alice' has no storage" in warned[0].getMessage()
