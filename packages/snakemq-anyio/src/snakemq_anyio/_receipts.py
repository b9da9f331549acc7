"""``Receipts``: the receipts of undelivered messages and the pacing of senders.

Theory of operation
-------------------

``send_message`` makes a ``Receipt`` per message (``add``), kept (weakly:
as long as the caller holds it, so a producer that drops its receipts keeps
nothing per message, e.g. while its queue is past the window on disk) per
peer by uuid until the engine settles the message (``MessageDelivered``, or
``MessageSent.settled`` towards a snakeMQ 1.6 peer: ``resolve`` with no
error) or drops it (``MessageDropped``: ``dropped``).  When the
``Messaging`` closes, what is left fails with ``MessagingClosedError``
(``close``).

Pacing (``pace``): a sender whose connected peer has ``max_queued``
undelivered messages (``Engine.queue_full``) waits on one event per peer,
set once the queue has room again (``Engine.queue_has_room``: half of it),
the peer went away (``release``) or the ``Messaging`` closed.  A tight loop
of sends also yields to the event loop every 4,096 sends, so the connection
tasks run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import anyio
import anyio.lowlevel
from snakemq_proto import Engine

from ._receipt import DeliveryError, MessageDroppedError, MessagingClosedError, Receipt

__all__ = ["Receipts"]


class Receipts:
    """The receipts of one ``Messaging`` and its waiting senders.

    Args:
        engine: the ``Messaging``'s engine (asked whether a queue has room).
        check_running: raises when the ``Messaging`` no longer runs; a
            waiting sender calls it when it wakes.
    """

    __slots__ = ("_by_peer", "_check_running", "_engine", "_sends", "_waiters")

    def __init__(self, engine: Engine, check_running: Callable[[], object]) -> None:
        self._engine = engine
        self._check_running = check_running
        # undelivered, by uuid, while their callers hold them
        self._by_peer: dict[str, weakref.WeakValueDictionary[bytes, Receipt]] = {}
        self._waiters: dict[str, anyio.Event] = {}  # senders waiting for room, by peer
        self._sends = 0

    def add(self, ident: str, uuid: bytes) -> Receipt:
        """A new receipt for the message ``uuid`` queued for ``ident``."""
        per_peer = self._by_peer.get(ident)
        if per_peer is None:
            per_peer = self._by_peer[ident] = weakref.WeakValueDictionary()
        receipt = per_peer[uuid] = Receipt(ident, uuid)
        return receipt

    def resolve(self, ident: str, uuid: bytes, error: DeliveryError | None = None) -> None:
        """The message is settled (``error`` None) or failed; senders waiting
        for room in ident's queue go on if there is room now."""
        per_peer = self._by_peer.get(ident)
        receipt = None if per_peer is None else per_peer.pop(uuid, None)
        if receipt is not None:
            receipt._resolve(error)
        # also without a receipt (dropped by its caller, or a restored message)
        if self._waiters and self._engine.queue_has_room(ident):
            self.release(ident)

    def dropped(self, ident: str, uuid: bytes) -> None:
        """The message's TTL ran out before it was delivered."""
        self.resolve(
            ident,
            uuid,
            MessageDroppedError(
                f"the TTL of the message to {ident!r} ran out before it was delivered",
                ident,
                uuid,
            ),
        )

    def release(self, ident: str) -> None:
        """Senders waiting for room in ident's queue go on."""
        waiter = self._waiters.pop(ident, None)
        if waiter is not None:
            waiter.set()

    async def pace(self, ident: str) -> None:
        """Wait, before queueing a message for ``ident``, until its queue has
        room (and now and then let the other tasks run)."""
        sends = self._sends = self._sends + 1
        if not sends & 4095:
            # let the connections run now and then in a tight send loop; rarely
            # (a few ms of sends), so that each writer takes several messages
            # per wake-up even when sends are spread over hundreds of peers:
            # every 64 sends, hub CPU/message at 400 peers was 6x that at 10;
            # every 4096 it is < 2x (bench/scale.py)
            await anyio.lowlevel.checkpoint()
        engine = self._engine
        if engine.queue_full(ident):
            while not engine.queue_has_room(ident):
                waiter = self._waiters.get(ident)
                if waiter is None:
                    waiter = self._waiters[ident] = anyio.Event()
                await waiter.wait()
                self._check_running()

    def close(self) -> None:
        """The ``Messaging`` closed: every undelivered receipt fails, every
        waiting sender wakes (and finds it closed)."""
        by_peer, self._by_peer = self._by_peer, {}
        for receipt in [r for per_peer in by_peer.values() for r in per_peer.values()]:
            receipt._resolve(
                MessagingClosedError(
                    f"messaging closed before the message to {receipt.ident!r} was delivered",
                    receipt.ident,
                    receipt.uuid,
                )
            )
        for waiter in self._waiters.values():
            waiter.set()
