"""``Wakeup``: a re-armable wake-up for tasks that sleep until "something changed".

``anyio.Event`` is one-shot: a set event stays set.  The pattern this package
needs everywhere is a condition variable without a lock: a task checks some
state, finds nothing to do and sleeps; whoever changes the state calls
``set()``, which wakes the tasks sleeping *now* and leaves nothing behind.
Check and sleep happen without an ``await`` between them, so no ``set()``
can fall in the gap (one event loop, one thread).
"""

from __future__ import annotations

import anyio

__all__ = ["Wakeup"]


class Wakeup:
    """Wake the tasks that are in ``wait()`` now; re-armed by itself."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        """Wake every task waiting now (a no-op when none waits)."""
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        """Sleep until the next ``set()``."""
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()

    @property
    def waiting(self) -> bool:
        """Whether a task may be waiting (a ``set()`` would wake it)."""
        return self._event is not None
