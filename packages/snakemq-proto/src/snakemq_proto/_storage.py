"""Queue storage: the interface, the batch of changes, and the memory storage.

The engine never calls a storage itself: it collects what must change in a
``StorageBatch`` (``Engine.take_storage_batch()``) and the I/O layer applies the
batch in one transaction with ``storage.apply(batch)`` — in a worker thread
for async code.  Batches must be applied in the order they were taken.  A
persistent message is durable once the batch holding its push was applied,
which is why ``send_message`` in both implementations applies the batch
before it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._message import Message


@attrs.define(eq=False)
class StorageBatch:
    """Changes to apply to a storage, in one transaction, in this order:
    pushes, TTL updates, deletes, then seen uuids.

    Attributes:
        push: ``(ident, message)`` to append to ident's queue; ``message.ttl``
            is the TTL still remaining.
        update_ttl: ``(uuid, remaining ttl)`` of stored messages (every queue
            holding that uuid).
        delete: uuids of stored messages that left their queue (every queue
            holding that uuid).
        seen: ``(ident, uuid)`` received from ident and handed to the
            application (the de-duplication window).
        seen_keep: how many seen uuids to keep per ident (older are pruned).
        update_ttl_in: ``(ident, uuid, remaining ttl)``: like ``update_ttl``
            but for ident's queue only.
        delete_from: ``(ident, uuid)``: like ``delete`` but from ident's queue
            only.

    The engine uses ``update_ttl_in`` and ``delete_from`` only while one
    message (one uuid) is stored in several queues — a program that sends
    one ``Message`` object to several peers.  A storage that ignores them
    stays correct but may keep a row until the last copy leaves.
    """

    push: list[tuple[str, Message]] = attrs.field(factory=list)
    update_ttl: list[tuple[bytes, float | None]] = attrs.field(factory=list)
    delete: list[bytes] = attrs.field(factory=list)
    seen: list[tuple[str, bytes]] = attrs.field(factory=list)
    seen_keep: int = 0
    update_ttl_in: list[tuple[str, bytes, float | None]] = attrs.field(factory=list)
    delete_from: list[tuple[str, bytes]] = attrs.field(factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.push
            or self.update_ttl
            or self.delete
            or self.seen
            or self.update_ttl_in
            or self.delete_from
        )

    def extend(self, other: StorageBatch) -> None:
        """Append ``other``'s changes after this batch's (for group commit)."""
        self.push.extend(other.push)
        self.update_ttl.extend(other.update_ttl)
        self.delete.extend(other.delete)
        self.seen.extend(other.seen)
        self.seen_keep = max(self.seen_keep, other.seen_keep)
        self.update_ttl_in.extend(other.update_ttl_in)
        self.delete_from.extend(other.delete_from)


@attrs.frozen
class StoredState:
    """What a storage holds: queues in order, and the de-duplication window."""

    queues: Mapping[str, Sequence[Message]]
    seen: Mapping[str, Sequence[bytes]]


@runtime_checkable
class QueuesStorage(Protocol):
    """Where persistent messages wait.  Implementations: ``MemoryQueuesStorage``
    (not durable; for tests) and ``SqliteQueuesStorage``."""

    def load(self) -> StoredState:
        """Return every stored queue (oldest message first) and seen window."""
        ...

    def apply(self, batch: StorageBatch) -> None:
        """Apply ``batch`` atomically; durable on return for durable storages."""
        ...

    def close(self) -> None:
        """Release the storage; further calls are errors."""
        ...


class MemoryQueuesStorage:
    """A storage that keeps everything in memory (not persistent; for tests)."""

    def __init__(self) -> None:
        self._queues: dict[str, dict[bytes, Message]] = {}
        self._seen: dict[str, dict[bytes, None]] = {}

    def load(self) -> StoredState:
        return StoredState(
            queues={k: list(v.values()) for k, v in self._queues.items() if v},
            seen={k: list(v) for k, v in self._seen.items() if v},
        )

    def apply(self, batch: StorageBatch) -> None:
        where: dict[bytes, str] = {}
        for ident, message in batch.push:
            self._queues.setdefault(ident, {})[message.uuid] = message
            where[message.uuid] = ident
        for uuid, ttl in batch.update_ttl:
            for queue in self._queues.values():
                if uuid in queue:
                    queue[uuid] = queue[uuid].with_ttl(ttl)
        for ident, uuid, ttl in batch.update_ttl_in:
            queue = self._queues.get(ident, {})
            if uuid in queue:
                queue[uuid] = queue[uuid].with_ttl(ttl)
        for uuid in batch.delete:
            for queue in self._queues.values():
                queue.pop(uuid, None)
        for ident, uuid in batch.delete_from:
            self._queues.get(ident, {}).pop(uuid, None)
        for ident, uuid in batch.seen:
            window = self._seen.setdefault(ident, {})
            window[uuid] = None
            while batch.seen_keep and len(window) > batch.seen_keep:
                del window[next(iter(window))]

    def close(self) -> None:
        pass
