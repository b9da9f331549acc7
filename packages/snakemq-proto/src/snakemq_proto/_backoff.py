"""When a connector dials again: the reconnect back-off.

The rule (one for both I/O packages):

* A connector dials at once when it is added.  After a dial that failed or a
  connection that ended, it waits ``interval``, then twice that after each
  further failure, up to ``max_interval``; each wait is multiplied by a random
  factor in [0.75, 1.0] so that many peers cut off together do not redial in
  step (the wait never exceeds the nominal delay, so ``max_interval`` is a
  true bound).
* The back-off starts over when a connection the connector made has
  *identified* (a handshake completed, so the peer is really there); a
  connection that drops during its handshake keeps backing off.
* After a crossed dial the connector is held (``RedialHolds``) and redials
  at once, its back-off started over, when it is released.

No clock here: ``Backoff.next_delay()`` returns seconds to wait and the caller
sleeps.  The random factor comes from a ``random.Random`` the caller may seed.
"""

from __future__ import annotations

import random

from ._checks import check_seconds

__all__ = ["JITTER", "Backoff"]

JITTER = (0.75, 1.0)
"""Each back-off wait is multiplied by a random factor in this range."""


class Backoff:
    """The reconnect back-off of one connector (see the module docstring).

    Args:
        interval: the first wait, seconds.
        max_interval: the longest wait (raised to ``interval`` if smaller).
        rng: the source of the jitter (a seeded ``random.Random`` in tests).

    Raises:
        ValueError: an interval that is not a positive number of seconds.
    """

    __slots__ = ("_rng", "failures", "interval", "max_interval")

    def __init__(
        self, interval: float, max_interval: float, rng: random.Random | None = None
    ) -> None:
        self.interval = check_seconds(interval, "reconnect_interval")
        self.max_interval = check_seconds(max_interval, "reconnect_max_interval")
        self._rng = rng if rng is not None else random.Random()
        self.failures = 0  # waits since the last reset

    def next_delay(self) -> float:
        """Seconds to wait before the next dial; the one after is longer.

        ``interval`` and ``max_interval`` are read now, so a program may
        change them while the connector runs.
        """
        nominal = min(
            max(self.max_interval, self.interval),
            self.interval * float(1 << min(self.failures, 30)),
        )
        self.failures += 1
        low, high = JITTER
        return nominal * self._rng.uniform(low, high)

    def reset(self) -> None:
        """Start over from ``interval`` (a connection identified, or a held
        redial was released)."""
        self.failures = 0
