"""``StorageWriter``: the one way storage batches reach a ``QueuesStorage``.

The engine hands out ``StorageBatch``es; the rules for applying them are the
same in both I/O packages and live here:

* *group commit*: batches taken while nothing is being written are merged
  (``add``) and applied as one transaction;
* *order*: batches are applied in the order they were taken;
* *carry and retry*: a batch that failed is kept and applied again, first,
  merged with everything taken since (nothing is lost and nothing overtakes
  it); a send whose batch failed is told so by the caller;
* *log once*: the first failure of a streak is logged with its traceback,
  the repeats only at debug level, and the end of the streak once.

No I/O of its own: ``snakemq`` calls ``apply()`` inline (under its lock),
``snakemq_anyio`` calls ``take()``, applies the batch in a worker thread and
reports ``succeeded()`` or ``failed()``.
"""

from __future__ import annotations

import logging

from ._storage import QueuesStorage, StorageBatch

__all__ = ["StorageWriter"]

log = logging.getLogger("snakemq.storage")


class StorageWriter:
    """Applies a peer's storage batches to ``storage`` (see the module docstring)."""

    __slots__ = ("_failing", "_pending", "storage")

    def __init__(self, storage: QueuesStorage) -> None:
        self.storage = storage
        self._pending: StorageBatch | None = None
        self._failing = False  # the last apply failed and was logged

    @property
    def pending(self) -> bool:
        """Whether changes wait to be applied (new, or carried after a failure)."""
        return self._pending is not None

    def add(self, batch: StorageBatch | None) -> None:
        """Queue ``batch`` (from ``engine.take_storage_batch()``) after what waits."""
        if batch is None:
            return
        if self._pending is None:
            self._pending = batch
        else:
            self._pending.extend(batch)

    def take(self) -> StorageBatch | None:
        """Everything waiting, as one batch to apply now (``None``: nothing)."""
        batch, self._pending = self._pending, None
        return batch

    def failed(self, batch: StorageBatch, exc: BaseException, *, report: bool = True) -> None:
        """Applying ``batch`` (from ``take()``) raised ``exc``: keep it, ahead
        of anything newer, for the next try.  With ``report`` the first
        failure of a streak is logged with its traceback."""
        if self._pending is not None:
            batch.extend(self._pending)
        self._pending = batch
        if not report:
            return
        if not self._failing:
            self._failing = True
            log.error(
                "queue storage failed; its changes are kept and retried: %s",
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        else:
            log.debug("queue storage still failing: %s", exc)

    def succeeded(self) -> None:
        """A batch was applied: a failure streak (if any) is over."""
        if self._failing:
            self._failing = False
            log.warning("queue storage works again; the kept changes are stored")

    def apply(self, *, report: bool = True) -> None:
        """Apply what waits, now, in this thread.

        Raises:
            Exception: whatever the storage raised; the changes stay pending.
        """
        batch = self.take()
        if batch is None:
            return
        try:
            self.storage.apply(batch)
        except Exception as exc:
            self.failed(batch, exc, report=report)
            raise
        self.succeeded()

    def apply_or_log(self) -> bool:
        """``apply()`` for a loop that must go on: never raises; a failure is
        logged once per streak.  Return whether everything was applied."""
        try:
            self.apply()
        except Exception:
            return False
        return True
