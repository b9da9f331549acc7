"""Per-peer outgoing queues: order, the in-flight prefix, TTL aging, pacing.

Theory of operation
-------------------

One ``PeerQueue`` per remote identifier holds ``_Item``s oldest first.  The
queue knows whether its peer is connected (``connected``), not which
connection carries it: the session of that connection asks it to encode
messages, and tells it what was written or acknowledged.

In flight
    The first ``in_flight`` items have been encoded for the current
    connection.  Towards a capable peer they stay in the queue (and storage)
    until acknowledged (``acknowledge()``); a reconnect resets ``in_flight``
    to 0, so they are sent again.  Towards a legacy peer an item leaves once
    its packet was completely written (``settle_written()``).

TTL
    A TTL is consumed only while the peer is not connected.  An item carries
    ``ttl``, what remained when aging started (queued while away, or the
    disconnect), and ``expires``, the moment it runs out, ``None`` while the
    peer is connected or the TTL is infinite.  ``ttl=0`` therefore reaches
    only a connected peer.  On connect the remaining TTL is computed from the
    same float the timer compares, so both agree at the boundary.

Expiry
    One ``ExpiryTimer`` per engine holds a heap of ``(expires, seq, item,
    queue)`` for every aging item.  Entries are never searched for: an item
    that stops aging sets ``expires = None``, which makes its entry stale, and
    stale entries are skipped when they reach the top, or dropped in one pass
    once they are the majority (a peer that flaps would grow the heap by its
    queue length each time otherwise).

    Bounded work: one ``expire()`` drops at most ``EXPIRE_BATCH`` items (and
    skips at most as many stale entries).  When more are due,
    ``next_deadline()`` is still in the past, so the I/O loop serves its
    sockets and calls again at once: 1M messages running out together cost
    many short passes, not one stall, and the storage deletes of each pass
    form one bounded batch.  Drops are reported in the same order as in one
    call (the heap order), each exactly once.

Pacing
    ``full()`` / ``has_room()``: a connected peer's queue counts as full at
    ``max_queued`` items and has room again at half (hysteresis, so producers
    wake for a batch).  While the peer is away queues grow and TTLs apply.

Storage
    A stored item's row is deleted through the ``StorageLedger`` whenever the
    item leaves (delivered, written to a legacy peer, expired, purged).

Window (a queue restored from a ``WindowedStorage``)
    Only the oldest ``window`` stored messages are loaded; the rows after
    them stay on disk (``disk = (after, end)``: ``after < seq <= end``).
    ``items`` is then the *head* (the first ``gap`` items, read from disk)
    followed by the *tail* (messages sent since the restart, which come
    after every row on disk).  Only the head is encoded; when it shrank to
    half the window, ``fill_request()`` asks the I/O layer to read the next
    rows, which ``filled()`` inserts at the gap.  When the disk is read to
    its end the tail joins the head.  TTL of rows on disk: every row read
    ages by the time the peer was away since the restart (``_aged``), so
    it expires at the same moment as if it had been loaded at the restart;
    one due on reading is dropped then (``MessageDropped``), at the latest
    when every older message of the queue has left.

Spill (a live queue longer than the window)
    With a ``WindowedStorage`` (``ledger.window`` set), a persistent message
    sent while the queue has rows on disk, or holds ``window`` items
    already, goes to the storage only (``StorageLedger.spill()``): it is one
    more row on disk (``spilled`` counts those not read back yet), read back
    by the same fills, after every row already there; ``disk``'s end is then
    ``DISK_END``.  A queue that starts spilling without rows on disk reads
    from ``SPILL_ANCHOR`` (the storage knows where the run starts).  The
    disk is read to its end once the restored rows are (``rest_end``) and
    every spilled row came back: rows spilled but not applied yet when a
    read ran are read by a later one.  A spilled row's stored TTL is its
    TTL plus the queue's aging so far (``_aged`` and the current away
    time), so the read sees the deadline it had when sent.  Non-persistent
    messages stay in memory (the tail): one sent after spilled rows waits
    for them; a persistent one sent after it is spilled and so delivered
    before it (persistent ones keep their order among themselves, as do
    non-persistent ones).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence

from ._errors import MalformedFrameError
from ._events import Event, MessageDropped, _delivered, _sent
from ._ledger import StorageLedger
from ._message import FLAG_PERSISTENT, Message
from ._storage import DISK_END, SPILL_ANCHOR
from ._wire import encode_messages

EXPIRE_BATCH = 1024
"""The most items ``ExpiryTimer.expire()`` drops in one call (see Expiry)."""


class _Item:
    """A queued message and its TTL accounting."""

    __slots__ = ("expires", "message", "reported", "stored", "ttl")

    def __init__(self, message: Message, ttl: float | None, stored: bool) -> None:
        self.message = message
        self.ttl = ttl  # remaining, as of when aging started (or the last connect)
        self.stored = stored
        self.expires: float | None = None  # when the TTL runs out, while aging
        self.reported = False  # MessageSent already emitted (ack overtook data_sent)


class ExpiryTimer:
    """The TTL deadlines of every aging item of an engine's queues."""

    __slots__ = ("_heap", "_seq", "_stale")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Item, PeerQueue]] = []
        self._stale = 0  # entries of _heap known to be stale
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def start(self, item: _Item, now: float, queue: PeerQueue) -> bool:
        """Start consuming ``item``'s TTL at ``now``; False if it is due at once
        (the caller removes it from its queue and reports the drop)."""
        ttl = item.ttl
        if ttl is None:
            return True
        if ttl <= 0:
            item.expires = None
            return False
        item.expires = expires = now + ttl
        heapq.heappush(self._heap, (expires, next(self._seq), item, queue))
        return True

    def start_at(self, item: _Item, expires: float, queue: PeerQueue) -> None:
        """``item`` runs out at ``expires``, which may be past: then it is
        dropped by the next ``expire()``, in its place among the others."""
        item.expires = expires
        heapq.heappush(self._heap, (expires, next(self._seq), item, queue))

    def stop(self, item: _Item) -> None:
        """``item`` stops aging (delivered, purged or its peer connected)."""
        if item.expires is not None:
            item.expires = None
            self._stale += 1

    def compact(self) -> None:
        """Drop stale entries once they are the majority."""
        heap = self._heap
        if self._stale > 256 and 2 * self._stale > len(heap):
            heap[:] = [e for e in heap if e[2].expires == e[0]]
            heapq.heapify(heap)
            self._stale = 0

    def next_deadline(self) -> float | None:
        """When the next item runs out, or ``None``."""
        heap = self._heap
        while heap:
            expires, _, item, _q = heap[0]
            if item.expires == expires:
                return expires
            heapq.heappop(heap)  # stale: delivered, reconnected or re-aged
            if self._stale:
                self._stale -= 1
        return None

    def expire(self, now: float, events: list[Event], limit: int = EXPIRE_BATCH) -> None:
        """Remove the items due at ``now`` from their queues, at most
        ``limit`` of them (``next_deadline()`` stays in the past while more
        are due), reporting each drop in the order the items ran out."""
        heap = self._heap
        expired: dict[PeerQueue, list[_Item]] = {}
        budget = limit  # drops and stale entries skipped
        while budget > 0 and heap and heap[0][0] <= now:
            budget -= 1
            expires, _, item, queue = heapq.heappop(heap)
            if item.expires != expires:
                if self._stale:
                    self._stale -= 1
                continue
            item.expires = None
            expired.setdefault(queue, []).append(item)
            queue.dropped(item, events)
        for queue, gone in expired.items():
            queue.remove(gone)


class PeerQueue:
    """The messages waiting for one remote peer, oldest first.

    ``items`` and ``in_flight`` are read by the engine and the session; only
    the queue changes them.
    """

    __slots__ = (
        "_aged",
        "_aging_since",
        "_ledger",
        "_timer",
        "connected",
        "disk",
        "filling",
        "gap",
        "ident",
        "in_flight",
        "items",
        "rest_end",
        "spilled",
        "window",
    )

    def __init__(self, ident: str, ledger: StorageLedger, timer: ExpiryTimer) -> None:
        self.ident = ident
        self.items: deque[_Item] = deque()
        self.in_flight = 0  # first items already encoded for the current connection
        self.connected = False
        self._ledger = ledger
        self._timer = timer
        self.disk: tuple[int, int] | None = None  # rows not read yet (see Window)
        self.gap = 0  # while disk: items before the rows on disk (the head)
        self.window = 0
        self.filling = False  # a fill_request() is being served
        self.rest_end = 0  # restored rows on disk are those with seq <= rest_end
        self.spilled = 0  # rows spilled (see Spill) and not read back yet
        self._aged = 0.0  # seconds the peer was away since the restart, until _aging_since
        self._aging_since: float | None = None

    # ------------------------------------------------------------ window

    def set_disk(self, after: int, end: int, window: int, now: float) -> None:
        """Rows ``after < seq <= end`` of the storage come after ``items``."""
        self.disk = (after, end)
        self.rest_end = end
        self.gap = len(self.items)
        self.window = window
        self._aged = 0.0
        self._aging_since = None if self.connected else now

    def _head(self) -> int:
        """How many items may be encoded: the head while rows wait on disk."""
        return len(self.items) if self.disk is None else self.gap

    def fill_request(self) -> tuple[int, int, int] | None:
        """``(after, end, count)`` to read when the head shrank to half the
        window (once: until ``filled()``)."""
        disk = self.disk
        if disk is None or self.filling or self.gap > self.window // 2:
            return None
        self.filling = True
        return disk[0], disk[1], self.window - self.gap

    def filled(
        self, rows: Sequence[tuple[int, Message]], count: int, now: float, events: list[Event]
    ) -> None:
        """The rows read for ``fill_request()`` (``count`` asked): insert
        them at the gap, aged by the time the peer was away."""
        self.filling = False
        disk = self.disk
        if disk is None:
            return  # purged meanwhile
        aged = self._aged
        since = self._aging_since
        ledger = self._ledger
        timer = self._timer
        ident = self.ident
        new: list[_Item] = []
        for _, message in rows:
            ttl = message.ttl
            uuid = message.uuid
            ledger.loaded(uuid)
            if ttl is None:
                new.append(_Item(message, None, stored=True))
                continue
            item = _Item(message, ttl - aged, stored=True)
            if since is not None:
                # away: it runs out when it would have, had it been loaded at
                # the restart (the same sum as for the loaded ones, so equal
                # deadlines stay in queue order), maybe already: then the next
                # expire() drops it after the older ones due
                timer.start_at(item, (since - aged) + ttl if aged else since + ttl, self)
            elif item.ttl is not None and item.ttl <= 0:
                self.dropped(item, events)  # ran out before the peer came
                continue
            elif aged:
                assert item.ttl is not None
                ledger.update_ttl(ident, uuid, item.ttl)
            new.append(item)
        items = self.items
        gap = self.gap
        if len(items) == gap:
            items.extend(new)
        else:
            both = list(items)
            self.items = deque(both[:gap] + new + both[gap:])
        self.gap = gap + len(new)
        after = rows[-1][0] if rows else disk[0]
        rest_end = self.rest_end
        self.spilled -= sum(1 for seq, _ in rows if seq > rest_end)
        if len(rows) < count or after >= rest_end:
            self.rest_end = after  # every restored row is read: the rest were spilled
            if self.spilled <= 0:
                self.spilled = 0
                self.disk = None
                return
        self.disk = (after, disk[1])

    # ------------------------------------------------------------ producers

    def load(self, messages: Sequence[Message], now: float, events: list[Event]) -> None:
        """Append messages restored from the storage (``ttl``: what remained)."""
        for message in messages:
            item = _Item(message, message.ttl, stored=True)
            self._ledger.loaded(message.uuid)
            if self._timer.start(item, now, self):
                self.items.append(item)
            else:
                self.dropped(item, events)

    def send(self, message: Message, persistent: bool, now: float) -> list[Event]:
        """Queue ``message``; with ``persistent``, a persistent message (TTL
        not 0) goes to the storage.  ``ttl=0`` with the peer away is a drop."""
        ttl = message.ttl
        connected = self.connected
        if not connected and ttl == 0:
            return [MessageDropped(self.ident, message.uuid)]
        stored = persistent and ttl != 0 and bool(message.flags & FLAG_PERSISTENT)
        if stored and (
            self.disk is not None
            or (self._ledger.window and len(self.items) >= self._ledger.window)
        ):
            self._spill(message, now)
            return []
        item = _Item(message, ttl, stored)
        self.items.append(item)
        if stored:
            self._ledger.push(self.ident, message)
        if not connected:
            self._timer.start(item, now, self)  # ttl > 0 here: not due yet
        return []

    def _spill(self, message: Message, now: float) -> None:
        """``message`` goes to the storage only, after the rows on disk."""
        ledger = self._ledger
        disk = self.disk
        first = disk is None
        if disk is None:
            self.disk = (SPILL_ANCHOR, DISK_END)
            self.rest_end = SPILL_ANCHOR
            self.gap = len(self.items)
            self.window = ledger.window
            self._aged = 0.0
            self._aging_since = None if self.connected else now
        elif disk[1] != DISK_END:
            self.disk = (disk[0], DISK_END)
        self.spilled += 1
        ttl = message.ttl
        if ttl is not None:
            aged = self._aged
            if self._aging_since is not None:
                aged += now - self._aging_since
            if aged:
                message = message.with_ttl(ttl + aged)
        ledger.spill(self.ident, message, first)

    def purge(self) -> list[bytes]:
        """Remove every message not in flight; return their uuids."""
        keep = list(itertools.islice(self.items, self.in_flight))
        removed = list(itertools.islice(self.items, self.in_flight, None))
        self.items = deque(keep)
        if self.disk is not None:  # the rows never read go too (not listed)
            self._ledger.batch.delete_rest.append((self.ident, *self.disk))
            self.disk = None
            self.spilled = 0
        timer = self._timer
        for item in removed:
            timer.stop(item)
            if item.stored:
                self._ledger.unstore(self.ident, item.message.uuid)
        timer.compact()
        return [i.message.uuid for i in removed]

    def queued(self) -> list[Message]:
        """The messages, each with its remaining TTL as of its last accounting."""
        return [
            i.message if i.ttl == i.message.ttl else i.message.with_ttl(i.ttl) for i in self.items
        ]

    def full(self, limit: int | None) -> bool:
        """A producer should wait: connected and ``limit`` messages wait."""
        return (
            limit is not None
            and self.connected
            and (len(self.items) >= limit or self.disk is not None)
        )

    def has_room(self, limit: int | None) -> bool:
        """A waiting producer may go on: away, or drained to half of ``limit``."""
        return (
            limit is None
            or not self.connected
            or (self.disk is None and len(self.items) <= limit // 2)
        )

    # ------------------------------------------------------------ the peer

    def connect(self, now: float, events: list[Event]) -> None:
        """The peer identified: stop aging (drop what is already due, record
        the remaining TTL of stored items); everything is sent afresh."""
        self.connected = True
        self.in_flight = 0
        ident = self.ident
        timer = self._timer
        ledger = self._ledger
        if self._aging_since is not None:
            self._aged += now - self._aging_since
            self._aging_since = None
        kept: deque[_Item] = deque()
        gap = self.gap
        for index, item in enumerate(self.items):
            expires = item.expires
            if expires is not None:
                remaining = expires - now
                timer.stop(item)
                if remaining <= 0:
                    # due, but handle_timeout() did not run yet
                    self.dropped(item, events)
                    if index < self.gap:
                        gap -= 1
                    continue
                item.ttl = remaining
                if item.stored:
                    ledger.update_ttl(ident, item.message.uuid, remaining)
            kept.append(item)
        self.items = kept
        self.gap = gap
        timer.compact()

    def disconnect(self, now: float, events: list[Event]) -> None:
        """The peer's connection ended: every item starts aging at ``now``
        (``ttl=0`` ones are dropped: they were only for a connected peer)."""
        self.connected = False
        self.in_flight = 0
        if self.disk is not None:
            self._aging_since = now
        timer = self._timer
        kept: deque[_Item] = deque()
        gap = self.gap
        for index, item in enumerate(self.items):
            if timer.start(item, now, self):
                kept.append(item)
            else:
                self.dropped(item, events)
                if index < self.gap:
                    gap -= 1
        self.items = kept
        self.gap = gap

    def sendable(self, window: int | None) -> bool:
        """Whether items wait to be encoded (``window``: the peer's receive
        window, ``None`` for a legacy peer)."""
        in_flight = self.in_flight
        return self._head() > in_flight and (window is None or in_flight < window)

    def encode(
        self,
        out: list[bytes],
        ends: deque[tuple[int, _Item]],
        offset: int,
        size: int,
        limit: int,
        window: int | None,
    ) -> int:
        """Encode the next items after the in-flight prefix onto ``out`` (see
        ``encode_messages()``), as far as ``window`` and ``limit`` allow;
        they join the in-flight prefix.  Returns the new size of ``out``."""
        items = self.items
        n = self._head()
        i = self.in_flight
        stop = n if window is None else min(n, window)
        if i < stop:
            # islice walks the deque once; items[i] would walk it per message
            count, size = encode_messages(
                itertools.islice(items, i, stop), out, ends, offset, size, limit
            )
            self.in_flight = i + count
        return size

    def settle_written(self, count: int) -> None:
        """The first ``count`` items were completely written to a legacy peer:
        they leave the queue (snakeMQ 1.6 semantics)."""
        items = self.items
        ledger = self._ledger
        ident = self.ident
        for _ in range(count):
            item = items.popleft()
            if item.stored:
                ledger.unstore(ident, item.message.uuid)
        self.in_flight -= count
        if self.disk is not None:
            self.gap -= count

    def acknowledge(
        self,
        count: int,
        last_uuid: bytes,
        ends: deque[tuple[int, _Item]],
        conn_id: str,
        events: list[Event],
        report_sent: bool,
        report_delivered: bool,
    ) -> None:
        """The peer acknowledged the first ``count`` items, the last of which
        is ``last_uuid``: they leave queue and storage (``MessageDelivered``).
        Items the ack overtakes in ``ends`` (written but not yet reported by
        ``data_sent()``) are reported sent first.

        Raises:
            MalformedFrameError: the ack does not match the in-flight prefix.
        """
        if count > self.in_flight:
            raise MalformedFrameError(
                f"ACK covers {count} messages but only {self.in_flight} are in flight"
            )
        items = self.items
        if items[count - 1].message.uuid != last_uuid:
            raise MalformedFrameError("ACK names a uuid that is not the one it counts to")
        ident = self.ident
        ledger = self._ledger
        nends = len(ends)
        j = 0  # ends not yet reached by data_sent(): the acked ones come first
        for _ in range(count):
            item = items.popleft()
            uuid = item.message.uuid
            if j < nends and ends[j][1] is item:
                # acknowledged before data_sent() caught up (async I/O race)
                if report_sent:
                    events.append(_sent(conn_id, ident, uuid, False))
                item.reported = True
                j += 1
            if item.stored:
                ledger.unstore(ident, uuid)
            if report_delivered:
                events.append(_delivered(ident, uuid))
        self.in_flight -= count
        if self.disk is not None:
            self.gap -= count

    # ------------------------------------------------------------- expiry

    def dropped(self, item: _Item, events: list[Event]) -> None:
        """``item`` ran out (the caller takes it out of ``items``)."""
        if item.stored:
            self._ledger.unstore(self.ident, item.message.uuid)
        events.append(MessageDropped(self.ident, item.message.uuid))

    def remove(self, gone: list[_Item]) -> None:
        """Take expired items out of the queue."""
        items = self.items
        if self.disk is not None:
            ids = {id(g) for g in gone}
            self.gap -= sum(1 for x in itertools.islice(items, self.gap) if id(x) in ids)
        if len(gone) == 1:
            items.remove(gone[0])
        elif items and items[0] is gone[0] and len(items) >= len(gone):
            # usually the oldest items run out first: pop the prefix, so a
            # mass expiry spread over many calls does not rebuild the queue
            # on each of them
            n = len(gone)
            i = 0
            while i < n and items[0] is gone[i]:
                items.popleft()
                i += 1
            if i < n:
                ids = {id(g) for g in gone[i:]}
                self.items = deque(x for x in items if id(x) not in ids)
        else:
            # one pass, not one deque.remove() scan per item
            ids = {id(i) for i in gone}
            self.items = deque(i for i in self.items if id(i) not in ids)
