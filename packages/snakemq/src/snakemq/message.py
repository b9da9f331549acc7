"""``Message`` and its flags (from ``snakemq_proto``)."""

from __future__ import annotations

from snakemq_proto import FLAG_PERSISTENT, MAX_IDENT_LENGTH, MAX_UUID_LENGTH, Message

__all__ = ["FLAG_PERSISTENT", "MAX_IDENT_LENGTH", "MAX_UUID_LENGTH", "Message"]
