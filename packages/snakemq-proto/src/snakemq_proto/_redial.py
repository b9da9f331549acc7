"""The redial hold after a crossed dial.

When two peers dial each other, the engine keeps one connection and closes
the other; if the closed one is ours it says ``RedialHeld(conn_id, ident)``.
The rule (one for both I/O packages): the connector that made ``conn_id``
does not redial while ``ident`` stays connected over the other connection;
on ``PeerDisconnected`` for ``ident`` it redials at once, its ``Backoff``
started over.  This table remembers who waits for whom.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["RedialHolds"]

_K = TypeVar("_K")


class RedialHolds(Generic[_K]):
    """Connectors held after a crossed dial, by the peer they wait for.

    ``_K`` is whatever names a connector in the I/O package (an address, a
    wake-up object).  ``hold()`` on ``RedialHeld``; ``release()`` on
    ``PeerDisconnected`` for that peer gives the connectors to redial now
    (with their back-off reset); ``release_all()`` when closing.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, list[_K]] = {}

    def hold(self, ident: str, connector: _K) -> None:
        """``connector`` waits until ``ident`` disconnects."""
        self._held.setdefault(ident, []).append(connector)

    def release(self, ident: str) -> list[_K]:
        """``ident`` disconnected: the connectors that may redial now."""
        return self._held.pop(ident, [])

    def release_all(self) -> Iterator[_K]:
        """Every held connector (the I/O package is closing)."""
        held, self._held = self._held, {}
        for connectors in held.values():
            yield from connectors

    def __contains__(self, ident: object) -> bool:
        return ident in self._held
