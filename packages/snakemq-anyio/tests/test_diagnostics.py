"""Setup mistakes, told in words that name the address or argument and the fix."""

from __future__ import annotations

import errno
import logging

import pytest
from snakemq_anyio import FLAG_PERSISTENT, Message, Messaging

pytestmark = pytest.mark.anyio


async def test_busy_port_names_the_address() -> None:
    async with Messaging("holder") as holder, Messaging("second") as second:
        _, port = await holder.add_listener(("127.0.0.1", 0))
        with pytest.raises(
            OSError, match=rf"cannot listen on 127.0.0.1:{port}: .*pick another"
        ) as info:
            await second.add_listener(("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE


async def test_persistent_without_storage_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="snakemq.anyio"):
        async with Messaging("alice") as alice:
            for _ in range(3):
                await alice.send_message("bob", Message(b"x", ttl=60, flags=FLAG_PERSISTENT))
    warned = [r for r in caplog.records if "FLAG_PERSISTENT" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].name == "snakemq.anyio" and "'alice' has no storage" in warned[0].getMessage()
