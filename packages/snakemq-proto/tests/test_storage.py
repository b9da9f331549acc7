"""StorageBatch and MemoryQueuesStorage: the reference storage semantics."""

from __future__ import annotations

from snakemq_proto import (
    FLAG_PERSISTENT,
    MemoryQueuesStorage,
    Message,
    QueuesStorage,
    StorageBatch,
    StoredState,
)


def msg(i: int, ttl: float | None = None) -> Message:
    return Message(b"%d" % i, ttl=ttl, flags=FLAG_PERSISTENT, uuid=bytes([i]) * 16)


def test_empty_batch_is_false_and_any_change_makes_it_true() -> None:
    assert not StorageBatch()
    assert not StorageBatch(seen_keep=10)
    assert StorageBatch(push=[("bob", msg(1))])
    assert StorageBatch(update_ttl=[(msg(1).uuid, 1.0)])
    assert StorageBatch(delete=[msg(1).uuid])
    assert StorageBatch(seen=[("bob", msg(1).uuid)])
    assert StorageBatch(update_ttl_in=[("bob", msg(1).uuid, 1.0)])
    assert StorageBatch(delete_from=[("bob", msg(1).uuid)])


def test_extend_appends_in_order() -> None:
    first = StorageBatch(push=[("bob", msg(1))], seen_keep=4)
    second = StorageBatch(
        push=[("bob", msg(2))],
        update_ttl=[(msg(1).uuid, 3.0)],
        delete=[msg(1).uuid],
        seen=[("carol", msg(9).uuid)],
        seen_keep=8,
        update_ttl_in=[("bob", msg(2).uuid, 1.0)],
        delete_from=[("bob", msg(2).uuid)],
    )
    first.extend(second)
    assert first.push == [("bob", msg(1)), ("bob", msg(2))]
    assert first.update_ttl == [(msg(1).uuid, 3.0)]
    assert first.delete == [msg(1).uuid]
    assert first.seen == [("carol", msg(9).uuid)]
    assert first.seen_keep == 8
    assert first.update_ttl_in == [("bob", msg(2).uuid, 1.0)]
    assert first.delete_from == [("bob", msg(2).uuid)]


def test_memory_storage_semantics() -> None:
    storage = MemoryQueuesStorage()
    assert isinstance(storage, QueuesStorage)
    assert storage.load() == StoredState(queues={}, seen={})
    storage.apply(StorageBatch(push=[("bob", msg(1, 10)), ("bob", msg(2)), ("carol", msg(1, 10))]))
    storage.apply(StorageBatch(update_ttl=[(msg(1).uuid, 4.0)]))
    queues = storage.load().queues
    assert [(m.uuid, m.ttl) for m in queues["bob"]] == [(msg(1).uuid, 4.0), (msg(2).uuid, None)]
    assert [m.ttl for m in queues["carol"]] == [4.0]  # every queue holding the uuid

    storage.apply(StorageBatch(update_ttl_in=[("carol", msg(1).uuid, 2.0)]))
    assert [m.ttl for m in storage.load().queues["carol"]] == [2.0]
    assert storage.load().queues["bob"][0].ttl == 4.0

    storage.apply(StorageBatch(delete_from=[("bob", msg(1).uuid)]))
    queues = storage.load().queues
    assert [m.uuid for m in queues["bob"]] == [msg(2).uuid]
    assert [m.uuid for m in queues["carol"]] == [msg(1).uuid]

    storage.apply(StorageBatch(delete=[msg(1).uuid, msg(2).uuid]))
    assert storage.load().queues == {}


def test_memory_storage_push_then_delete_in_one_batch_leaves_nothing() -> None:
    storage = MemoryQueuesStorage()
    storage.apply(StorageBatch(push=[("bob", msg(1))], delete=[msg(1).uuid]))
    assert storage.load().queues == {}


def test_memory_storage_seen_window_is_pruned_oldest_first() -> None:
    storage = MemoryQueuesStorage()
    storage.apply(StorageBatch(seen=[("bob", bytes([i]) * 16) for i in range(10)], seen_keep=4))
    storage.apply(StorageBatch(seen=[("carol", b"c" * 16)], seen_keep=4))
    seen = storage.load().seen
    assert list(seen["bob"]) == [bytes([i]) * 16 for i in range(6, 10)]
    assert list(seen["carol"]) == [b"c" * 16]
    storage.close()
