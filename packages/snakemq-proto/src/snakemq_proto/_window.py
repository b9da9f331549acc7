"""The receive side of acknowledgements: de-duplication and cumulative acks.

Theory of operation
-------------------

Only capable peers (``CAP_ACK``) get acknowledgements; a legacy peer's
messages are handed to the application and forgotten.

``PeerWindow`` (one per remote identifier, outliving its connections) keeps
the uuids of the last ``keep`` messages handed to the application (``seen``,
persisted with a storage) and the uuids delivered but not yet handed
(``pending``).  A message whose uuid is in either is a duplicate: never
delivered again, but acknowledged — a copy of a message not yet handed only
once the original is (``_RX_WAIT``), so that an ack always means "the
application has it".

``ReceiveWindow`` (one per capable connection) keeps every message received
on it and not yet acknowledged, in arrival order, as ``[uuid, state]``:

* ``_RX_UNHANDED``: ``MessageReceived`` emitted, ``handed()`` not yet called;
* ``_RX_READY``: handed, or a duplicate of a message handed before;
* ``_RX_WAIT``: a copy of a message received earlier (on another connection)
  and not yet handed.

Acks are cumulative and in order: ``Ack(count, last_uuid)`` covers the next
``count`` messages of the connection; ``drain()`` counts the longest prefix
that may be acknowledged.  A peer that sends more unacknowledged messages
than the window it was told is cut off.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from ._errors import UnexpectedFrameError
from ._events import Event, MessageReceived, _new, _rx_conn, _rx_ident, _rx_message
from ._message import Message
from ._storage import StorageBatch
from ._wire import encode_ack_packet

# states of a received message on its way to an acknowledgement
_RX_UNHANDED = "unhanded"
_RX_READY = "ready"
_RX_WAIT = "wait"


class PeerWindow:
    """What was received from one remote identifier, across connections.

    ``seen`` is a dict used as an ordered set of the last ``keep`` uuids
    handed (insertion order is arrival order, the oldest first).  Deleting
    its oldest keys leaves dead slots at the front of the table, which
    CPython reclaims only by growing it (to 32,768 slots for 8,192 live
    keys) and which every look for the oldest key walks past; once
    ``keep // 4`` keys were deleted, ``trim()`` copies ``seen`` into a
    right-sized table.  A full window so costs ~85 B per uuid (tracemalloc:
    the 16-byte ``bytes`` and its table slot) instead of ~121, for one
    C-level copy of the window per ``keep // 4`` messages handed.
    """

    __slots__ = ("dead", "keep", "pending", "seen")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.seen: dict[bytes, None] = {}  # handed, oldest first (a window of `keep`)
        self.pending: set[bytes] = set()  # received, not yet handed
        self.dead = 0  # keys deleted from `seen` since its table was last compacted

    def load(self, uuids: list[bytes] | tuple[bytes, ...]) -> None:
        """Restore the seen uuids a storage kept (oldest first)."""
        seen = self.seen
        for uuid in uuids[-self.keep :]:
            seen[uuid] = None
        self.trim()

    def trim(self) -> None:
        """Forget the oldest seen uuids beyond ``keep``.

        Replaces ``seen`` when it compacts it: callers read ``self.seen``
        again after a call."""
        seen = self.seen
        excess = len(seen) - self.keep
        if excess > 0:
            for old in list(itertools.islice(seen, excess)):
                del seen[old]
            self.dead += excess
            if self.dead >= max(self.keep >> 2, 64):
                self.seen = dict(seen)  # a table sized for `keep`, the dead slots gone
                self.dead = 0


class ReceiveWindow:
    """The messages received on one capable connection, until acknowledged.

    Args:
        peer: the remote identifier's ``PeerWindow``.
        size: how many unacknowledged messages the peer may send (ours).
    """

    __slots__ = ("ack_count", "ack_last", "order", "peer", "size", "unready")

    def __init__(self, peer: PeerWindow, size: int) -> None:
        self.peer = peer
        self.size = size
        # entries are [uuid: bytes, state]: typed Any, the hot loops test no types
        self.unready: deque[list[Any]] = deque()  # arrival order
        self.order: deque[list[Any]] = deque()  # the _RX_UNHANDED entries, in order
        self.ack_count = 0  # messages acknowledgeable, not yet in an ACK
        self.ack_last = b""

    def receive(
        self, messages: list[Message], conn_id: str, ident: str, events: list[Event]
    ) -> None:
        """Deliver the messages that are not duplicates (``MessageReceived``).

        Raises:
            UnexpectedFrameError: the peer overran the receive window.
        """
        peer = self.peer
        pending = peer.pending
        seen = peer.seen
        unready = self.unready
        order = self.order
        window = self.size
        append = events.append
        for message in messages:
            if len(unready) >= window:
                # every entry is a message the sender has not seen acknowledged
                raise UnexpectedFrameError(
                    f"peer sent more than the receive window of {window} unacknowledged messages"
                )
            uuid = message.uuid
            if uuid in pending:
                # a copy of a message received but not yet handed (on an earlier
                # connection): acknowledged once the original is handed
                unready.append([uuid, _RX_WAIT])
                continue
            if uuid in seen:
                if unready:
                    unready.append([uuid, _RX_READY])
                else:
                    self.ack_count += 1
                    self.ack_last = uuid
                continue
            pending.add(uuid)
            entry: list[Any] = [uuid, _RX_UNHANDED]
            unready.append(entry)
            order.append(entry)
            event: MessageReceived = _new(MessageReceived)  # _received(), inline
            _rx_conn(event, conn_id)
            _rx_ident(event, ident)
            _rx_message(event, message)
            append(event)

    def unhanded(self) -> int:
        """Messages delivered and not yet handed."""
        return len(self.order)

    def handed(self, count: int, ident: str, batch: StorageBatch | None) -> None:
        """The next ``count`` delivered messages reached the application; with
        ``batch``, their uuids are recorded for the storage's window."""
        order = self.order
        peer = self.peer
        seen = peer.seen
        pending = peer.pending
        for _ in range(count):
            entry = order.popleft()
            entry[1] = _RX_READY
            uuid = entry[0]
            seen[uuid] = None
            pending.discard(uuid)
            if batch is not None:
                batch.seen.append((ident, uuid))
        peer.trim()
        self.drain()

    def drain(self) -> None:
        """Count the longest prefix of ``unready`` that may be acknowledged:
        messages handed (_RX_READY) and copies of messages whose original,
        received on an earlier connection, has been handed since (_RX_WAIT)."""
        unready = self.unready
        pending = self.peer.pending
        while unready:
            uuid, state = unready[0]
            if state is _RX_UNHANDED or (state is _RX_WAIT and uuid in pending):
                break
            unready.popleft()
            self.ack_count += 1
            self.ack_last = uuid

    def take_ack(self) -> bytes:
        """The ACK packet for what ``drain()`` counted (``ack_count`` > 0)."""
        packet = encode_ack_packet(self.ack_count, self.ack_last)
        self.ack_count = 0
        return packet
