"""``SqliteQueuesStorage``: durable queues in an SQLite file (WAL mode)."""

from __future__ import annotations

from snakemq_proto import SqliteQueuesStorage

__all__ = ["SqliteQueuesStorage"]
