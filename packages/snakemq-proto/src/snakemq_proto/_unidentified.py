"""The cap on connections that have not identified yet.

Theory of operation
-------------------

Before it identifies, a connection someone dialled to us may send only the
handshake's frames, and all of them together may make us keep at most the
engine's ``unidentified_budget`` bytes.  Their *number* is bounded here:
each one costs a socket, a session and a decoder for up to the handshake
timeout, so a thousand idle dials would otherwise hold a thousand of each.

At most ``cap`` accepted connections may await identification at once
(connections we dialled are not counted: we chose to make them).  A new
one beyond that closes the *oldest* waiting one: a real peer identifies
within a round trip, so it is rarely the oldest, while connections held
open on purpose are — refusing the newcomer instead would let whoever holds
``cap`` idle connections lock every real peer out.

The closes are due at once: the engine hands their ``CloseConnection`` out
from its next ``handle_timeout()`` (``next_deadline()`` says so).  One
WARNING per streak of evictions, and an INFO line with the count when it
ends (a connection finds room again), not one per connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._events import Event

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["DEFAULT_MAX_UNIDENTIFIED", "UnidentifiedCap"]

log = logging.getLogger("snakemq.engine")

DEFAULT_MAX_UNIDENTIFIED = 512
"""Accepted connections that may await identification at once."""


class UnidentifiedCap:
    """The accepted connections not identified yet, oldest first, and the cap.

    Args:
        cap: how many may wait at once (an int >= 1).
    """

    __slots__ = ("_closes", "_evicted", "_sessions", "cap", "due")

    def __init__(self, cap: int) -> None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_unidentified must be an int >= 1, got {cap!r}")
        self.cap = cap
        self._sessions: dict[str, Session] = {}  # insertion order: oldest first
        self._closes: list[Event] = []
        self._evicted = 0  # in the current streak
        self.due: float | None = None  # when the pending closes were decided

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Session, now: float) -> None:
        """``session`` was accepted and awaits identification; close the
        oldest waiting ones if that makes more than ``cap``."""
        sessions = self._sessions
        if len(sessions) < self.cap:
            if self._evicted:
                log.info(
                    "connections awaiting identification are below max_unidentified (%d) "
                    "again; %d were closed as the oldest",
                    self.cap,
                    self._evicted,
                )
                self._evicted = 0
        else:
            if not self._evicted:
                log.warning(
                    "%d accepted connections have not identified yet (max_unidentified): "
                    "closing the oldest for each new one (conn=%s first); logged once "
                    "until there is room again",
                    len(sessions),
                    next(iter(sessions)),
                )
            while len(sessions) >= self.cap:
                conn_id = next(iter(sessions))
                oldest = sessions.pop(conn_id)
                if not oldest.closed:  # else its close is under way already
                    self._closes.extend(oldest.closing())
                    self._evicted += 1
            self.due = now
        sessions[session.conn_id] = session

    def discard(self, conn_id: str) -> None:
        """Identified, or gone."""
        self._sessions.pop(conn_id, None)

    def take_closes(self) -> list[Event]:
        """The ``CloseConnection`` events of the connections evicted so far."""
        closes, self._closes = self._closes, []
        self.due = None
        return closes
