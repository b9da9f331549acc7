"""SQLite queue storage (being written; see the storage issue notes)."""

from __future__ import annotations

from ._storage import StorageBatch, StoredState


class SqliteQueuesStorage:
    """Queues persisted in an SQLite file (WAL mode, schema-versioned)."""

    def __init__(self, path: str) -> None:
        raise NotImplementedError("SqliteQueuesStorage is not written yet")

    def load(self) -> StoredState:
        raise NotImplementedError

    def apply(self, batch: StorageBatch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
