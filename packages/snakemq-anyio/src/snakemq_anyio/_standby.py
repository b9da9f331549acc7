"""Opening a peer's storage, and waiting as a standby until it serves its ident.

With a storage shared by processes (``SqlAlchemyQueuesStorage`` on
PostgreSQL), a second process configured with the same identifier is a
standby: ``async with Messaging(...)`` does not enter — so nothing listens
or dials as that identifier — until the holder's lease is released (the
server releases it when the holder dies).  A holder checks its lease every
``lease_poll`` seconds (``LeaseKeeper``) and steps down when another process
took it.  Every storage call runs in a worker thread.
"""

from __future__ import annotations

import logging
import os
import time

import anyio
import anyio.to_thread
from snakemq_proto import (
    Lease,
    LeaseLostError,
    LeaseWatch,
    LegacyQueuesStorage,
    QueuesStorage,
    StorageError,
    lease_watch,
    open_storage,
    standby,
    storage_at,
    take_over_attempt,
)

log = logging.getLogger("snakemq_anyio")


async def _try(lease: Lease) -> bool:
    """One attempt to take over (it may wait on the server up to
    ``lease_poll`` seconds); a server that cannot be reached is a reason to
    keep waiting, not to give up (it is logged)."""
    try:
        return await anyio.to_thread.run_sync(take_over_attempt, lease)
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
            while True:
                started = time.monotonic()  # an attempt starts every lease_poll s
                if await _try(lease):
                    break
                await anyio.sleep(max(0.0, started + lease.lease_poll - time.monotonic()))
            log.warning("%r took over: serving it now", ident)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(storage.close)
        raise
    return opened


class LeaseKeeper:
    """A holder's task that checks its lease every ``lease_poll`` seconds
    (``LeaseWatch``, in a worker thread).  When another process took the
    identifier over it steps down: it cancels ``Messaging``'s task group —
    listeners, connections, dialers, and the ``async with`` body — and
    ``Messaging`` leaves its block with ``LeaseLostError``."""

    def __init__(self, ident: str, watch: LeaseWatch) -> None:
        self.ident = ident
        self.watch = watch
        self.lost: LeaseLostError | None = None

    @classmethod
    def of(cls, ident: str, storage: object) -> LeaseKeeper | None:
        """A keeper when ``storage`` guards ``ident`` with a renewable lease."""
        watch = lease_watch(storage)
        return None if watch is None else cls(ident, watch)

    async def run(self, scope: anyio.CancelScope) -> None:
        """Check until the lease is lost, then cancel ``scope`` (the task group's)."""
        watch = self.watch
        while True:
            await anyio.sleep(max(0.0, watch.deadline(time.monotonic()) - time.monotonic()))
            if await anyio.to_thread.run_sync(watch.check, time.monotonic()):
                break
        log.critical(
            "%r was taken over by another process (lease lost): closing every listener "
            "and connection",
            self.ident,
        )
        self.lost = LeaseLostError(
            f"{self.ident!r} was taken over by another process (its lease in the storage was "
            "lost): this Messaging stopped serving it; enter a new one to be a standby again"
        )
        scope.cancel()

    def raise_if_lost(self) -> None:
        """Raise ``LeaseLostError`` if the lease was lost (in ``__aexit__``)."""
        if self.lost is not None:
            raise self.lost
