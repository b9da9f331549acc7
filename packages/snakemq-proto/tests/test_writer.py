"""StorageWriter: group commit, carry and retry, one log line per failure streak."""

from __future__ import annotations

import logging

import pytest
from snakemq_proto import MemoryQueuesStorage, Message, StorageBatch, StorageWriter


class FlakyStorage(MemoryQueuesStorage):
    """A memory storage that fails while ``failing`` is set (a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.applied: list[StorageBatch] = []

    def apply(self, batch: StorageBatch) -> None:
        if self.failing:
            raise OSError("database or disk is full")
        self.applied.append(batch)
        super().apply(batch)


def push(ident: str, data: bytes) -> tuple[StorageBatch, Message]:
    message = Message(data)
    return StorageBatch(push=[(ident, message)]), message


def test_batches_added_together_are_one_transaction() -> None:
    storage = FlakyStorage()
    writer = StorageWriter(storage)
    writer.add(push("bob", b"1")[0])
    writer.add(None)
    writer.add(push("bob", b"2")[0])
    assert writer.pending
    writer.apply()
    assert not writer.pending
    assert len(storage.applied) == 1
    assert [m.data for m in storage.load().queues["bob"]] == [b"1", b"2"]
    writer.apply()  # nothing waits: no empty transaction
    assert len(storage.applied) == 1


def test_a_failed_batch_is_kept_and_goes_first() -> None:
    storage = FlakyStorage()
    writer = StorageWriter(storage)
    first, message = push("bob", b"1")
    writer.add(first)
    storage.failing = True
    with pytest.raises(OSError, match="disk is full"):
        writer.apply()
    assert writer.pending
    writer.add(StorageBatch(delete=[message.uuid]))  # delivered meanwhile
    writer.add(push("bob", b"2")[0])
    storage.failing = False
    writer.apply()
    assert [m.data for m in storage.load().queues["bob"]] == [b"2"]


def test_take_and_failed_for_a_worker_thread() -> None:
    storage = FlakyStorage()
    writer = StorageWriter(storage)
    writer.add(push("bob", b"1")[0])
    batch = writer.take()
    assert batch is not None and not writer.pending
    writer.add(push("bob", b"2")[0])  # taken while the first was being applied
    writer.failed(batch, OSError("full"))
    again = writer.take()
    assert again is not None
    assert [m.data for _, m in again.push] == [b"1", b"2"]


def test_a_failure_streak_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage()
    writer = StorageWriter(storage)
    storage.failing = True
    caplog.set_level(logging.DEBUG, logger="snakemq.storage")
    for n in range(5):
        writer.add(push("bob", bytes([n]))[0])
        assert writer.apply_or_log() is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    storage.failing = False
    assert writer.apply_or_log() is True
    assert len(storage.load().queues["bob"]) == 5
    assert sum("works again" in r.getMessage() for r in caplog.records) == 1
    storage.failing = True  # a new streak is logged again
    writer.add(push("bob", b"x")[0])
    writer.apply_or_log()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2


def test_a_send_that_raises_does_not_log(caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage()
    writer = StorageWriter(storage)
    storage.failing = True
    writer.add(push("bob", b"1")[0])
    with pytest.raises(OSError):
        writer.apply(report=False)  # the caller raises it to the program
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert writer.pending
