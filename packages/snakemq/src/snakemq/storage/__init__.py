"""Queue storages: where persistent messages wait until delivered.

``MemoryQueuesStorage`` keeps nothing across restarts (tests);
``snakemq.storage.sqlite.SqliteQueuesStorage`` is durable, and
``snakemq.storage.sqla.SqlAlchemyQueuesStorage`` keeps queues in PostgreSQL,
shared by peers, with one holder per identifier.  A storage written for
snakeMQ 1.6's ``QueuesStorageBase`` interface is adapted by ``Messaging``.
"""

from __future__ import annotations

from snakemq_proto import MemoryQueuesStorage, QueuesStorage, StorageBatch, StoredState

QueuesStorageBase = QueuesStorage  # snakeMQ 1.6 name

__all__ = [
    "MemoryQueuesStorage",
    "QueuesStorage",
    "QueuesStorageBase",
    "StorageBatch",
    "StoredState",
]
