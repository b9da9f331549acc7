"""A holder keeping its lease: when to check it, and what a check means.

Theory of operation
-------------------
A storage shared by processes (``SqlAlchemyQueuesStorage`` on PostgreSQL)
lets one process at a time serve an identifier (``Lease``).  The server
releases the lease when the holder's session dies — also when the holder
itself is alive but its connection was cut or hung — and a standby takes it.
So a holder must not assume it keeps the lease: every ``lease_poll``
seconds it checks (``check_lease()``, one round trip, bounded by the
storage's call timeout), and when the check says another process holds it
now, the holder steps down: it stops serving the identifier (closes its
listeners and connections, stops dialling) — the sync ``Messaging`` stops
its loop, the anyio ``Messaging`` leaves its ``async with`` with
``LeaseLostError``.  To be a standby again, open the storage anew.

A check that cannot reach the server decides nothing: a standby cannot take
the lease from a server it cannot reach either, so the holder goes on (its
persistent sends raise meanwhile) and checks again; the failure is logged
once per streak.

A standby starts an attempt to take over every ``lease_poll`` seconds
(``take_over_attempt``).  A lease that can wait on the server waits up to
``lease_poll`` seconds in each attempt, so the attempts cover all the time
and the standby takes over the moment the server ends the holder's session;
an attempt that fails at once (the server is down) leaves the rest of the
``lease_poll`` seconds as a pause.

``LeaseWatch`` is the holder's schedule and rule, without a clock or a thread:
``now`` comes in, and ``check`` runs in whatever thread the I/O layer gives
it (the sync loop's, or an anyio worker thread).
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from ._errors import StorageError
from ._storage import Lease

__all__ = ["LeaseWatch", "RenewableLease", "lease_watch", "take_over_attempt"]

log = logging.getLogger("snakemq.storage")


@runtime_checkable
class RenewableLease(Protocol):
    """A lease its holder can confirm (``SqlAlchemyQueuesStorage``)."""

    lease_poll: float
    """Seconds between two checks (and a standby's attempts)."""

    @property
    def leased(self) -> bool:
        """True when the storage guards its identifier with a lease."""
        ...

    def check_lease(self) -> bool:
        """Confirm the lease with the server; False once another process
        holds it.  Raises ``StorageError`` when the server cannot tell."""
        ...

    def wait_acquire(self, seconds: float) -> bool:
        """Try to take the lease, waiting up to ``seconds`` for the server to
        grant it; return whether it is held."""
        ...


class LeaseWatch:
    """When a holder checks its lease, and whether it must step down.

    Args:
        lease: the storage whose lease this process holds.
    """

    def __init__(self, lease: RenewableLease) -> None:
        self.lease = lease
        self.interval = float(lease.lease_poll)
        self._next: float | None = None
        self._failing = False

    def deadline(self, now: float) -> float:
        """When the next check is due (the first one ``interval`` after ``now``)."""
        if self._next is None:
            self._next = now + self.interval
        return self._next

    def due(self, now: float) -> bool:
        """True when a check is due at ``now``."""
        return now >= self.deadline(now)

    def check(self, now: float) -> bool:
        """Check the lease once (blocking I/O); True when this process must
        step down: another process serves the identifier now."""
        self._next = now + self.interval
        try:
            held = self.lease.check_lease()
        except StorageError as exc:
            if not self._failing:
                log.warning("cannot check the lease (%s); serving on, checking again", exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("lease checked again: still held")
        self._failing = False
        return not held


def lease_watch(storage: object) -> LeaseWatch | None:
    """A ``LeaseWatch`` for ``storage`` when it guards its identifier with a
    renewable lease, else ``None`` (nothing to watch)."""
    if isinstance(storage, RenewableLease) and storage.leased:
        return LeaseWatch(storage)
    return None


def take_over_attempt(lease: Lease) -> bool:
    """One attempt of a standby to take its identifier over (blocking I/O);
    return whether it serves it now.  Start one every ``lease.lease_poll``
    seconds: a ``RenewableLease`` waits on the server up to that long."""
    if isinstance(lease, RenewableLease):
        return lease.wait_acquire(lease.lease_poll)
    return lease.try_acquire()
