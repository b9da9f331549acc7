"""The write-stall rule: a peer that does not read is closed.

Theory of operation
-------------------

What we keep for one connection is bounded (the I/O layer holds one
``data_to_send()`` buffer at a time, at most ``OUTPUT_HIGH_WATER`` plus one
message; answers to pings at most ``CONTROL_OUT_MAX``; the rest waits in the
peer's queue).  But a peer that stops reading — identified, sending nothing,
or pinging so that keepalive never fires — would hold its connection, its
buffers and its in-flight messages forever.

So every write the I/O layer starts is watched: it calls
``Engine.writing(conn_id, now)`` right after ``data_to_send()`` returned
bytes, and the write is done once ``data_sent()`` reported them all (the
session's ``written`` reached the end offset noted here).  A write not done
``timeout`` seconds after it started is a stall: ``Engine.handle_timeout``
closes the connection with ``SlowReaderError``.  Progress is counted per
write, as both I/O layers see it (one ``send`` of one buffer), so a peer
must take one buffer (at most ``OUTPUT_HIGH_WATER`` bytes plus one message)
within ``timeout``.

No clock here: ``now`` comes in, as everywhere in ``snakemq_proto``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._errors import SlowReaderError

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["DEFAULT_WRITE_STALL_TIMEOUT", "WriteStalls"]

DEFAULT_WRITE_STALL_TIMEOUT = 60.0
"""Seconds one write to a peer may wait without completing, in both I/O
packages, before the connection is closed (``SlowReaderError``): as long as
keepalive's interval, so a peer that reads nothing is let go about as soon
as one that answers nothing."""


class WriteStalls:
    """The writes in progress of an engine's connections and their deadlines.

    Args:
        timeout: seconds a write may take; ``None`` turns the rule off.
    """

    __slots__ = ("since", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        # conn_id -> (start, end offset); the engine drops a write it sees done
        self.since: dict[str, tuple[float, int]] = {}

    def started(self, conn_id: str, session: Session, now: float) -> None:
        """A write of everything ``session`` emitted so far starts at ``now``."""
        if self.timeout is not None and session.written < session.emitted:
            self.since[conn_id] = (now, session.emitted)

    def forget(self, conn_id: str) -> None:
        self.since.pop(conn_id, None)

    def _pending(self, sessions: Mapping[str, Session]) -> list[tuple[str, float, Session]]:
        """(conn_id, start, session) of the writes still in progress; the
        finished ones are forgotten on the way."""
        out = []
        done = []
        for conn_id, (start, end) in self.since.items():
            session = sessions.get(conn_id)
            if session is None or session.closed or session.written >= end:
                done.append(conn_id)
            else:
                out.append((conn_id, start, session))
        for conn_id in done:
            del self.since[conn_id]
        return out

    def next_deadline(self, sessions: Mapping[str, Session]) -> float | None:
        """When the oldest write in progress stalls, or ``None``."""
        timeout = self.timeout
        if timeout is None:
            self.since.clear()
            return None
        if not self.since:
            return None
        starts = [start for _, start, _ in self._pending(sessions)]
        return min(starts) + timeout if starts else None

    def stalled(
        self, now: float, sessions: Mapping[str, Session]
    ) -> list[tuple[Session, SlowReaderError]]:
        """The sessions whose write has not finished ``timeout`` seconds
        after it started, each with the error that closes it."""
        timeout = self.timeout
        if timeout is None or not self.since:
            return []
        out = []
        for conn_id, start, session in self._pending(sessions):
            if now - start >= timeout:
                del self.since[conn_id]
                waiting = session.emitted - session.written
                out.append(
                    (
                        session,
                        SlowReaderError(
                            f"peer does not read: {waiting} bytes we wrote were not taken "
                            f"within {timeout} s (write_stall_timeout)"
                        ),
                    )
                )
        return out
