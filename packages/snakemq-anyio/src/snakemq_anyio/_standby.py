"""Opening a peer's storage, and waiting as a standby until it serves its ident.

With a storage shared by processes (``SqlAlchemyQueuesStorage`` on
PostgreSQL), a second process configured with the same identifier is a
standby: ``async with Messaging(...)`` does not enter — so nothing listens
or dials as that identifier — until the holder's lease is released (the
server releases it when the holder dies).  Every storage call runs in a
worker thread.
"""

from __future__ import annotations

import logging
import os

import anyio
import anyio.to_thread
from snakemq_proto import (
    Lease,
    LegacyQueuesStorage,
    QueuesStorage,
    StorageError,
    open_storage,
    standby,
    storage_at,
)

log = logging.getLogger("snakemq_anyio")


async def _try(lease: Lease) -> bool:
    """One attempt to take over; a server that cannot be reached is a reason
    to keep waiting, not to give up (it is logged)."""
    try:
        return await anyio.to_thread.run_sync(lease.try_acquire)
    except StorageError as exc:
        log.warning("standby: %s; trying again", exc)
        return False


async def open_for(
    ident: str, storage: QueuesStorage | LegacyQueuesStorage | str | os.PathLike[str]
) -> QueuesStorage:
    """``storage`` (a storage, or a path or database URL opened in a worker
    thread) bound to ``ident``, once this process serves ``ident``."""
    if isinstance(storage, str | os.PathLike):
        storage = await anyio.to_thread.run_sync(storage_at, storage)
    try:
        opened = await anyio.to_thread.run_sync(open_storage, storage, ident)
        lease = standby(opened)
        if lease is not None:
            log.info("%r is a standby: another process serves it", ident)
            while not await _try(lease):
                await anyio.sleep(lease.lease_poll)
            log.warning("%r took over: serving it now", ident)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(storage.close)
        raise
    return opened
