"""``StorageFlusher``: the engine's storage batches, applied in a worker thread.

One task takes ``engine.take_storage_batch()`` and applies it through a
``snakemq_proto.StorageWriter`` in a worker thread, one batch at a time, so
batches are applied in order and all changes made while one commits go into
the next (group commit).  Batches are numbered as they are taken; a persistent
``send_message`` waits until the batch holding its message was applied
(``wait_stored``) and raises ``StorageError`` if that batch failed.  A failed
batch is kept by the writer and applied again first, with the next one.

After each batch the same task serves the engine's reads of restored queues
(``engine.fill_requests()``, a window of rows each) in the worker thread, so
storage calls stay in one order and off the event loop.  A read that failed
is asked for again ``FILL_RETRY`` seconds later at the latest: the queue
waiting for those rows may have nothing else that would wake the flusher (its
window ran out and its peer is away), and they must still be delivered or
dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.to_thread
from snakemq_proto import (
    FillRequest,
    Message,
    QueuesStorage,
    StorageBatch,
    StorageError,
    StorageWriter,
    WindowedStorage,
)

from ._wakeup import Wakeup

__all__ = ["FILL_RETRY", "StorageFlusher"]

log = logging.getLogger("snakemq.anyio")

FILL_RETRY = 1.0
"""Seconds after a failed read of a queue's rows before it is tried again."""


class StorageFlusher:
    """Applies one ``Messaging``'s storage batches (see the module docstring).

    Args:
        storage: the open storage (closed by ``close()``).
        take_batch: ``engine.take_storage_batch``.
        take_fills: ``engine.fill_requests``.
        filled: called on the loop with each request and the rows read
            (``None`` if reading failed).
    """

    __slots__ = (
        "_applied",
        "_applied_wakeup",
        "_closed",
        "_failed",
        "_fill_failing",
        "_filled",
        "_requested",
        "_take_batch",
        "_take_fills",
        "_taken",
        "_wakeup",
        "_windowed",
        "_writer",
    )

    def __init__(
        self,
        storage: QueuesStorage,
        take_batch: Callable[[], StorageBatch | None],
        take_fills: Callable[[], list[FillRequest]] = list,
        filled: Callable[[FillRequest, list[tuple[int, Message]] | None], None] | None = None,
    ) -> None:
        self._writer = StorageWriter(storage)
        self._take_batch = take_batch
        self._take_fills = take_fills
        self._filled = filled
        # decided once: a runtime Protocol check walks the protocol's members
        self._windowed = storage if isinstance(storage, WindowedStorage) else None
        self._fill_failing = False
        self._requested = False
        self._wakeup = Wakeup()
        self._taken = 0  # batches taken from the engine
        self._applied = 0  # ... and applied (or failed)
        self._applied_wakeup = Wakeup()
        self._failed: dict[int, BaseException] = {}
        self._closed = False

    def request(self) -> None:
        """The engine may have new changes: flush them soon."""
        if not self._requested:
            self._requested = True
            self._wakeup.set()

    async def run(self) -> None:
        """The flusher task (runs until cancelled)."""
        writer = self._writer
        while True:
            if not self._requested:
                if self._fill_failing:  # nothing else may come: retry the read
                    with anyio.move_on_after(FILL_RETRY):
                        await self._wakeup.wait()
                else:
                    await self._wakeup.wait()
            self._requested = False
            with anyio.CancelScope(shield=True):
                # taken and applied as one step: a batch is never lost to a cancel
                writer.add(self._take_batch())
                batch = writer.take()
                self._taken += 1
                number = self._taken
                if batch is not None:
                    try:
                        await anyio.to_thread.run_sync(writer.storage.apply, batch)
                    except Exception as exc:
                        self._failed[number] = exc
                        writer.failed(batch, exc)  # logged once per failure streak
                    else:
                        writer.succeeded()
            self._applied = number
            self._applied_wakeup.set()
            await self._fill()

    async def _fill(self) -> None:
        """Read what the engine's restored queues ask for (worker thread)."""
        filled = self._filled
        storage = self._windowed
        if filled is None or storage is None:
            return
        for r in self._take_fills():
            try:
                with anyio.CancelScope(shield=True):
                    rows = await anyio.to_thread.run_sync(
                        storage.read_queue, r.ident, r.after, r.end, r.count
                    )
            except Exception:
                if not self._fill_failing:  # logged once per failure streak
                    log.exception("cannot read the queue of %r from the storage", r.ident)
                self._fill_failing = True
                filled(r, None)
                continue
            self._fill_failing = False
            filled(r, rows)

    async def wait_stored(self) -> None:
        """Wait until what the engine queued so far is applied.

        Raises:
            StorageError: the batch holding it failed.
            RuntimeError: the flusher closed first.
        """
        number = self._taken + 1  # the batch that holds what was just queued
        self.request()
        while self._applied < number:
            if self._closed:
                raise RuntimeError("Messaging closed while a message was being stored")
            await self._applied_wakeup.wait()
        error = self._failed.pop(number, None)
        if error is not None:
            raise StorageError(f"the message could not be stored: {error}") from error

    async def close(self) -> None:
        """Apply the last changes and close the storage (shielded by the caller)."""
        self._closed = True
        writer = self._writer
        writer.add(self._take_batch())
        batch = writer.take()
        self._taken += 1
        try:
            if batch is not None:
                await anyio.to_thread.run_sync(writer.storage.apply, batch)
        except Exception as exc:
            log.exception("could not store the last queue changes")
            self._failed[self._taken] = exc
        finally:
            self._applied = self._taken  # sends waiting for this batch may return
            await anyio.to_thread.run_sync(writer.storage.close)
        self._applied_wakeup.set()
