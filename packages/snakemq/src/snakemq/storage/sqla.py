"""``SqlAlchemyQueuesStorage``: queues in a database server (PostgreSQL), at
snakeMQ 1.6's import path; ``pip install "snakemq[postgresql]"``."""

from __future__ import annotations

from snakemq_proto import SqlAlchemyQueuesStorage

__all__ = ["SqlAlchemyQueuesStorage"]
