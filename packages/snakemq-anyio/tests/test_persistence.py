"""Persistent queues survive a SIGKILL of the sending process (SQLite storage)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from snakemq_anyio import (
    FLAG_PERSISTENT,
    MemoryQueuesStorage,
    Message,
    Messaging,
    SqliteQueuesStorage,
    StorageError,
)
from snakemq_proto import StorageBatch
from snakemq_proto.testing import small_fs

pytestmark = pytest.mark.anyio

SENDER = Path(__file__).with_name("persistent_sender.py")


@asynccontextmanager
async def _sender(
    backend: str, db: Path | str, port: int, count: int
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    process = await anyio.open_process(
        [sys.executable, str(SENDER), backend, str(db), str(port), str(count)]
    )
    try:
        assert process.stdout is not None
        yield process, BufferedByteReceiveStream(process.stdout)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


async def _kill_after(process: Process, lines: BufferedByteReceiveStream, stop: int) -> int:
    """Read the durable indices the sender reports; SIGKILL it once ``stop``
    was reported.  Return the highest index it reported at all.

    The sender keeps going while the kill is on its way: the lines it printed
    meanwhile are still in the pipe and are read after its death, since each
    one is a promise too (that message was durable).
    """
    last = -1
    while last < stop:
        line = await lines.receive_until(b"\n", 100)
        assert line != b"done", "the sender finished before it could be killed"
        last = int(line)
    process.kill()  # SIGKILL: no cleanup, no last commit
    await process.wait()
    while True:
        try:
            line = await lines.receive_until(b"\n", 100)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            # end of the pipe (a line cut by the kill promised nothing more:
            # its message was durable, and the next was not started)
            return last
        assert line != b"done", "the sender finished before it could be killed"
        index = int(line)
        assert index == last + 1, f"the sender reported {index} after {last}"
        last = index


def _check_stream(got: list[int], reported: int) -> None:
    """What the sender promised after a SIGKILL: every index it reported
    durable arrived exactly once and in order, and nothing beyond what it
    sent.  Sends are sequential, so besides the reported ones at most the one
    in progress at the kill (whose batch may have been committed) can exist.
    """
    assert got == list(range(len(got))), "lost, duplicated or reordered messages"
    assert len(got) >= reported + 1, f"reported durable up to {reported}, received {len(got)}"
    assert len(got) <= reported + 2, (
        f"received {len(got)} messages, but the sender only got as far as {reported + 1}"
    )


async def _receive_until_marker(receiver: Messaging) -> list[int]:
    got: list[int] = []
    while True:
        _ident, message = await receiver.receive()
        if message.data == b"end":
            return got
        got.append(int(message.data))


async def test_queue_survives_sigkill_while_peer_is_away(
    anyio_backend: str, tmp_path: Path
) -> None:
    db = tmp_path / "sender.db"
    with anyio.fail_after(60):
        async with _sender(anyio_backend, db, 0, 100_000) as (process, lines):
            reported = await _kill_after(process, lines, 300)
        # restart the sender on the same file, now with the receiver reachable
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            async with Messaging("sender", storage=SqliteQueuesStorage(str(db))) as sender:
                assert len(sender.queued("receiver")) >= reported + 1
                await sender.add_connector(("127.0.0.1", port))
                marker = await sender.send_message("receiver", Message(b"end", ttl=None))
                got = await _receive_until_marker(receiver)
                await marker.delivered()
                assert sender.queued("receiver") == []
    # every index the sender printed (also those printed while the kill was on
    # its way) arrived; the send in progress at the kill may have been stored
    _check_stream(got, reported)
    # delivered messages left the storage
    async with Messaging("sender", storage=db) as sender:
        assert sender.queued("receiver") == []


async def test_no_loss_when_sender_is_killed_mid_stream(anyio_backend: str, tmp_path: Path) -> None:
    db = tmp_path / "sender.db"
    with anyio.fail_after(60):
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            got: list[int] = []
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    # takes (and so acknowledges) messages while the sender runs
                    async for _ident, message in receiver:
                        if message.data == b"end":
                            return
                        got.append(int(message.data))

                tg.start_soon(collect)
                async with _sender(anyio_backend, db, port, 100_000) as (process, lines):
                    reported = await _kill_after(process, lines, 2000)
                async with Messaging("sender", storage=db) as sender:
                    await sender.add_connector(("127.0.0.1", port))
                    marker = await sender.send_message(
                        "receiver", Message(b"end", ttl=None, flags=FLAG_PERSISTENT)
                    )
                    await marker.delivered()
    _check_stream(got, reported)


class _FlakyStorage(MemoryQueuesStorage):
    """Fails the next ``failures`` applies, like a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def apply(self, batch: StorageBatch) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        super().apply(batch)


async def test_storage_failure_raises_and_the_batch_is_retried() -> None:
    storage = _FlakyStorage()
    async with Messaging("alice", storage=storage) as alice:
        storage.failures = 1
        first = Message(b"first", ttl=None, flags=FLAG_PERSISTENT)
        with pytest.raises(StorageError, match="disk full"):
            await alice.send_message("bob", first)
        # the message is still queued, and the next commit stores both
        await alice.send_message("bob", Message(b"second", ttl=None, flags=FLAG_PERSISTENT))
        assert [m.data for m in storage.load().queues["bob"]] == [b"first", b"second"]


async def test_a_disk_filled_by_the_queue_recovers_and_delivered_messages_stay_gone() -> None:
    with small_fs("3m") as where:
        db = where / "queues.sqlite"
        sent: list[Message] = []
        receipts = []
        async with Messaging("sender", storage=db) as sender:
            _host, port = await sender.add_listener(("127.0.0.1", 0))
            raised = 0
            with anyio.fail_after(60):
                while raised < 3:  # fill the disk while the receiver is away
                    m = Message(os.urandom(4000), ttl=None, flags=FLAG_PERSISTENT)
                    sent.append(m)
                    try:
                        receipts.append(await sender.send_message("receiver", m))
                    except StorageError as exc:
                        assert "disk is full" in str(exc)
                        raised += 1
            assert len(sent) > 50
            async with Messaging("receiver") as receiver:
                await receiver.add_connector(("127.0.0.1", port))
                with anyio.fail_after(60):
                    # a send that raised stays queued in memory: it is delivered too
                    got = [(await receiver.receive())[1].data for _ in sent]
                    assert got == [m.data for m in sent]
                    for receipt in receipts:
                        await receipt.delivered()
                    # the deletes commit on the full disk, and space comes back
                    after = await sender.send_message(
                        "receiver", Message(b"after", ttl=None, flags=FLAG_PERSISTENT)
                    )
                    assert (await receiver.receive())[1].data == b"after"
                    await after.delivered()
        with SqliteQueuesStorage(db) as reopened:  # a restart resends nothing
            assert reopened.load().queues == {}
