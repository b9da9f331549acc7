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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

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
        delete_rest: ``(ident, after, end)``: delete ident's rows that were
            never read (``after < seq <= end``, see ``WindowedStorage``); only
            an engine restored from a ``WindowedStorage`` makes them.
        spill: ``(ident, message, first)``: like ``push`` (applied after
            every ``push``), but the engine does not hold the message in
            memory: it reads it back later (``WindowedStorage``).  ``first``
            starts a run of spilled rows of ident: ``SPILL_ANCHOR`` as
            ``after`` (of ``read_queue`` or ``delete_rest``) means "before
            the first row of ident's last run".  Only an engine restored
            from a ``WindowedStorage`` makes them.

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
    delete_rest: list[tuple[str, int, int]] = attrs.field(factory=list)
    spill: list[tuple[str, Message, bool]] = attrs.field(factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.push
            or self.update_ttl
            or self.delete
            or self.seen
            or self.update_ttl_in
            or self.delete_from
            or self.delete_rest
            or self.spill
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
        self.delete_rest.extend(other.delete_rest)
        self.spill.extend(other.spill)


@attrs.frozen
class StoredState:
    """What a storage holds: queues in order, and the de-duplication window.

    From ``WindowedStorage.load_window(window)``: ``queues`` holds at most
    ``window`` messages per ident and ``rest`` maps an ident whose queue goes
    on to ``(after, end)``: its further rows are those with
    ``after < seq <= end``, read later with ``read_queue``.
    """

    queues: Mapping[str, Sequence[Message]]
    seen: Mapping[str, Sequence[bytes]]
    rest: Mapping[str, tuple[int, int]] = attrs.field(factory=dict)
    window: int = 0


@attrs.frozen
class FillRequest:
    """The engine wants ``storage.read_queue(ident, after, end, count)``
    (``Engine.fill_requests()``); give the rows to ``Engine.filled()``."""

    ident: str
    after: int
    end: int
    count: int


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


@runtime_checkable
class WindowedStorage(QueuesStorage, Protocol):
    """A storage that can load a window of each queue and read the rest
    later, so memory is bounded by the window, not by the backlog."""

    def load_window(self, window: int) -> StoredState:
        """Like ``load()``, but at most ``window`` messages per queue (the
        oldest); ``rest`` says where the other rows are."""
        ...

    def read_queue(self, ident: str, after: int, end: int, count: int) -> list[tuple[int, Message]]:
        """``(seq, message)`` of ident's next ``count`` rows with
        ``after < seq <= end``, oldest first (``ttl``: as stored).
        ``after == SPILL_ANCHOR``: from ident's last run of spilled rows
        (none yet applied: ``[]``)."""
        ...


QUEUE_WINDOW = 8192
"""Messages per queue a ``WindowedStorage`` loads (and keeps read ahead); a
persistent message sent to a queue holding that many already, or with rows
on disk, goes to the storage only (``StorageBatch.spill``)."""

SPILL_ANCHOR = -1
"""``after`` meaning "before ident's last run of spilled rows" (see
``StorageBatch.spill``); resolved by the storage."""

DISK_END = 2**63 - 1
"""``end`` meaning "every row of ident after ``after``" (the largest seq)."""


def load_state(storage: QueuesStorage, window: int = QUEUE_WINDOW) -> StoredState:
    """``storage.load_window(window)`` if the storage can (a
    ``WindowedStorage``), else ``storage.load()``: everything."""
    if isinstance(storage, WindowedStorage):
        return storage.load_window(window)
    return storage.load()


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


def seen_window_appends(
    uuids: Sequence[bytes], position: dict[bytes, int], low: int, high: int, keep: int
) -> tuple[dict[bytes, int], int]:
    """Replay appends to a stored de-duplication window without loading it.

    A stored window of one ident holds ``seq`` numbers ``[low, high)`` (the
    next append gets ``high``); ``position`` maps the uuids of ``uuids``
    already stored to their ``seq`` (it is updated).  Each uuid absent from
    the window is appended, then the window is pruned to ``keep`` entries
    (``0``: unbounded), exactly as the memory storage does.

    Returns ``({uuid: seq} to insert or replace, new low)``: rows with a
    ``seq`` below the new low are to be deleted.
    """
    appended: dict[bytes, int] = {}
    for uuid in uuids:
        at = position.get(uuid)
        if at is None or at < low:
            position[uuid] = appended[uuid] = high
            high += 1
        # pruned after every entry, present or not, as the memory storage does
        if keep and high - low > keep:
            low = high - keep
    return appended, low


class LegacyQueuesStorage(Protocol):
    """A storage written against snakeMQ 1.6's ``QueuesStorageBase``.

    Items are message objects with ``uuid``, ``data``, ``ttl`` and ``flags``.
    """

    def get_queues(self) -> Iterable[str]: ...
    def get_items(self, queue_name: str) -> Iterable[Any]: ...
    def push(self, queue_name: str, item: Any) -> None: ...
    def delete_items(self, items: list[Any]) -> None: ...
    def delete_all(self) -> None: ...
    def update_items_ttl(self, items: list[Any]) -> None: ...
    def close(self) -> None: ...


class LegacyStorageAdapter:
    """Plugs a snakeMQ 1.6 style storage (``get_queues``, ``get_items``,
    ``push``, ``delete_items``, ``delete_all``, ``update_items_ttl``) into
    the engine's batch interface.

    What 1.6's interface cannot give: a batch is several calls, not one
    transaction (a crash between two leaves some applied); the
    de-duplication window is kept in memory only; per-queue deletes and TTL
    updates of a message sent to several peers wait for its last copy.
    """

    def __init__(self, legacy: LegacyQueuesStorage) -> None:
        self.legacy = legacy
        self._items: dict[bytes, Message] = {}  # stored messages by uuid

    def load(self) -> StoredState:
        queues: dict[str, list[Message]] = {}
        for name in list(self.legacy.get_queues()):
            queue = queues[name] = []
            for item in self.legacy.get_items(name):
                message = Message(bytes(item.data), item.ttl, item.flags, bytes(item.uuid))
                self._items[message.uuid] = message
                queue.append(message)
        return StoredState(queues={k: v for k, v in queues.items() if v}, seen={})

    def apply(self, batch: StorageBatch) -> None:
        items = self._items
        gone = set(batch.delete)
        for ident, message in batch.push:
            if message.uuid not in gone:
                items[message.uuid] = message
                self.legacy.push(ident, message)
        updated = []
        for uuid, ttl in batch.update_ttl:
            if uuid in items and uuid not in gone:
                items[uuid] = items[uuid].with_ttl(ttl)
                updated.append(items[uuid])
        if updated:
            self.legacy.update_items_ttl(updated)
        deleted = [items.pop(uuid) for uuid in dict.fromkeys(batch.delete) if uuid in items]
        if deleted:
            self.legacy.delete_items(deleted)

    def close(self) -> None:
        self.legacy.close()


def open_storage(storage: QueuesStorage | LegacyQueuesStorage, ident: str) -> QueuesStorage:
    """The storage ``Messaging`` of peer ``ident`` works with: a 1.6 style
    storage is wrapped in ``LegacyStorageAdapter``; a storage shared by
    peers (``SqlAlchemyQueuesStorage``) is bound to ``ident``.

    Raises:
        TypeError: ``storage`` is neither kind.
    """
    if not isinstance(storage, QueuesStorage):
        if all(callable(getattr(storage, name, None)) for name in _LEGACY_METHODS):
            return LegacyStorageAdapter(storage)
        raise TypeError(
            "queues_storage must have load/apply/close (QueuesStorage) or snakeMQ 1.6's "
            f"get_queues/get_items/push/delete_items/update_items_ttl, not {storage!r}"
        )
    bind = getattr(storage, "bind", None)
    if callable(bind):
        bind(ident)
    return storage


def standby(storage: QueuesStorage | None) -> Lease | None:
    """``storage`` as a ``Lease`` when this process does not serve its ident
    yet (a standby), else ``None``."""
    if storage is None or not isinstance(storage, Lease):
        return None
    return None if storage.held else storage


@runtime_checkable
class Lease(Protocol):
    """A storage that lets one process at a time serve an identity."""

    lease_poll: float
    """Seconds between a standby's attempts to take over."""

    @property
    def held(self) -> bool:
        """True when this process serves the identity."""
        ...

    def try_acquire(self) -> bool:
        """Try once to take the identity over; return ``held``."""
        ...

    @property
    def lost(self) -> bool:
        """True once another process took the identity over from this one
        (this process must stop serving it)."""
        ...


_LEGACY_METHODS = ("get_queues", "get_items", "push", "delete_items", "update_items_ttl", "close")
