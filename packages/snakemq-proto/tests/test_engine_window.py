"""A restored queue bounded by a window: the rest waits on disk (issue 14).

The engine is restored from a real SQLite file with a small window; the
test plays the I/O layer: it applies every storage batch and serves every
``fill_requests()`` in order, as both I/O packages do.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from helpers import Clock, Link, of_type
from snakemq_proto import (
    FLAG_PERSISTENT,
    Engine,
    Event,
    MemoryQueuesStorage,
    Message,
    MessageDelivered,
    MessageDropped,
    SqliteQueuesStorage,
    StorageBatch,
    load_state,
)
from snakemq_proto._queue import EXPIRE_BATCH

W = 8


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: pathlib.Path) -> Iterator[SqliteQueuesStorage]:
    with SqliteQueuesStorage(tmp_path / "queues.sqlite") as s:
        yield s


def stored(storage: SqliteQueuesStorage, ident: str, n: int, ttl: float | None) -> list[Message]:
    messages = [Message(b"m%d" % i, ttl=ttl, flags=FLAG_PERSISTENT) for i in range(n)]
    storage.apply(StorageBatch(push=[(ident, m) for m in messages]))
    return messages


def restored(
    storage: SqliteQueuesStorage, clock: Clock, window: int = W
) -> tuple[Engine, list[Event]]:
    a = Engine("alice", persistent=True)
    events = a.restore(load_state(storage, window), clock.now)
    return a, events


def serve(a: Engine, storage: SqliteQueuesStorage, clock: Clock) -> tuple[bool, list[Event]]:
    """Apply the batches and read what the engine asks for, until it asks no more."""
    served = False
    events: list[Event] = []
    while True:
        batch = a.take_storage_batch()
        if batch:
            storage.apply(batch)
        requests = a.fill_requests()
        if not requests:
            return served, events
        served = True
        for r in requests:
            events += a.filled(r, storage.read_queue(r.ident, r.after, r.end, r.count), clock.now)


def run(link: Link, storage: SqliteQueuesStorage, peak: list[int]) -> None:
    """Pump and serve until quiet, noting the most messages alice held in memory."""
    a = link.a.engine
    while True:
        link.pump()
        peak.append(max((len(a.queued(i)) for i in a.queue_idents()), default=0))
        served, events = serve(a, storage, link.clock)
        link.a.record(events)
        if not served:
            return


def test_restore_loads_a_window_and_delivers_the_rest_once_in_order(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    bob = stored(storage, "bob", 50, None)
    carol = stored(storage, "carol", 3, None)
    a, events = restored(storage, clock)
    assert events == []
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in bob[:W]]
    assert [m.uuid for m in a.queued("carol")] == [m.uuid for m in carol]
    assert sorted(a.queue_idents()) == ["bob", "carol"]
    link = Link(a, Engine("bob"), clock).connect()
    peak: list[int] = []
    run(link, storage, peak)
    assert [m.uuid for m in link.b.received] == [m.uuid for m in bob]
    assert of_type(link.a.events, MessageDelivered) == [
        MessageDelivered("bob", m.uuid) for m in bob
    ]
    assert max(peak) <= W
    assert storage.load().queues == {"carol": carol}


def test_a_reconnect_resends_the_unacknowledged_and_nothing_twice(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    bob = stored(storage, "bob", 40, None)
    a, _ = restored(storage, clock)
    b = Engine("bob")  # keeps its de-duplication window across connections
    got: list[Message] = []
    for cut in (30, 200, 70):  # bytes of alice's output that get through
        link = Link(a, b, clock).connect()
        link.pump()
        link.transfer(link.a, cut)
        link.transfer(link.b)
        got += link.b.received
        link.disconnect()
        link.a.record(serve(a, storage, clock)[1])
    link = Link(a, b, clock).connect()
    run(link, storage, [])
    got += link.b.received
    assert [m.uuid for m in got] == [m.uuid for m in bob]
    assert storage.load().queues == {}
    assert not a.queue_idents()


def test_rows_on_disk_expire_when_their_ttl_runs_out_as_if_loaded(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    bob = stored(storage, "bob", 30, 10.0)
    a, _ = restored(storage, clock)
    assert a.next_deadline() == clock.now + 10
    clock.advance(9.5)
    assert a.handle_timeout(clock.now) == []
    clock.advance(1)
    events = a.handle_timeout(clock.now)
    # the head ran out; every row read after it has run out as well
    more = serve(a, storage, clock)[1]
    while a.next_deadline() is not None:
        events += a.handle_timeout(clock.now)
        more += serve(a, storage, clock)[1]
    assert events + more == [MessageDropped("bob", m.uuid) for m in bob]
    assert storage.load().queues == {}
    assert a.queued("bob") == [] and a.queue_idents() == []


def test_a_mass_expiry_drops_the_rows_read_meanwhile_after_the_older_ones(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    # one handle_timeout() drops at most EXPIRE_BATCH: the head is down to
    # half while older messages are still due when the next rows are read
    window = 2 * EXPIRE_BATCH
    bob = stored(storage, "bob", 2 * window + 100, 10.0)
    a, _ = restored(storage, clock, window)
    clock.advance(11)
    events: list[Event] = []
    while a.next_deadline() is not None:
        dropped = a.handle_timeout(clock.now)
        assert len(dropped) <= EXPIRE_BATCH
        events += dropped + serve(a, storage, clock)[1]
    assert events == [MessageDropped("bob", m.uuid) for m in bob]
    assert storage.load().queues == {}


def test_rows_read_while_connected_carry_the_ttl_left_when_the_peer_came(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    stored(storage, "bob", 30, 10.0)
    a, _ = restored(storage, clock)
    clock.advance(4)  # away: 6 s of each TTL remain
    link = Link(a, Engine("bob"), clock).connect()
    link.pump()  # identified: the head goes out
    assert len(link.b.received) == W
    clock.advance(100)  # connected: TTLs do not age
    run(link, storage, [])
    assert [m.ttl for m in link.b.received] == [6] * 30


def test_messages_sent_after_the_restore_come_after_the_rows_on_disk(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    old = stored(storage, "bob", 20, None)
    a, _ = restored(storage, clock)
    new = [Message(b"n%d" % i, ttl=None, flags=FLAG_PERSISTENT) for i in range(5)]
    for m in new:
        a.send_message("bob", m, clock.now)
    link = Link(a, Engine("bob"), clock).connect()
    run(link, storage, [])
    assert [m.uuid for m in link.b.received] == [m.uuid for m in old + new]
    assert storage.load().queues == {}


def test_purge_deletes_the_rows_on_disk_too(storage: SqliteQueuesStorage, clock: Clock) -> None:
    bob = stored(storage, "bob", 30, None)
    a, _ = restored(storage, clock)
    assert a.purge("bob") == [m.uuid for m in bob[:W]]  # those in memory
    serve(a, storage, clock)
    assert storage.load().queues == {}
    assert a.queue_idents() == []


def test_a_storage_that_cannot_read_windows_loads_everything(clock: Clock) -> None:
    memory = MemoryQueuesStorage()
    ms = [Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT) for i in range(3 * W)]
    memory.apply(StorageBatch(push=[("bob", m) for m in ms]))
    state = load_state(memory, W)
    assert state.rest == {}
    a = Engine("alice", persistent=True)
    a.restore(state, clock.now)
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in ms]
    assert a.fill_requests() == []


# ---------------------------------------------------------------- live spill


def persistent(prefix: bytes, n: int, ttl: float | None = None) -> list[Message]:
    return [Message(prefix + b"%d" % i, ttl=ttl, flags=FLAG_PERSISTENT) for i in range(n)]


def send_all(a: Engine, storage: SqliteQueuesStorage, clock: Clock, ms: list[Message]) -> None:
    """Send each message and apply its batch, as send_message does."""
    for m in ms:
        assert a.send_message("bob", m, clock.now) == []
        serve(a, storage, clock)


def test_live_persistent_sends_past_the_window_go_to_disk_and_come_back_in_order(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    a, _ = restored(storage, clock)  # an empty file: nothing on disk yet
    ms = persistent(b"m", 10 * W + 3)
    send_all(a, storage, clock, ms)
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in ms[:W]]
    assert [m.uuid for m in storage.load().queues["bob"]] == [m.uuid for m in ms]
    link = Link(a, Engine("bob"), clock).connect()
    peak: list[int] = []
    run(link, storage, peak)
    assert [m.uuid for m in link.b.received] == [m.uuid for m in ms]
    assert max(peak) <= W
    assert storage.load().queues == {}
    # the queue spills again once it is full again
    more = persistent(b"n", 3 * W)
    link.disconnect()
    send_all(a, storage, clock, more)
    assert len(a.queued("bob")) == W
    link = Link(a, link.b.engine, clock).connect()
    run(link, storage, [])
    assert [m.uuid for m in link.b.received] == [m.uuid for m in more]
    assert storage.load().queues == {}


def test_sends_to_a_restored_queue_go_to_disk_after_its_rows(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    old = stored(storage, "bob", 3 * W, None)
    a, _ = restored(storage, clock)
    new = persistent(b"n", 3 * W)
    send_all(a, storage, clock, new)
    assert len(a.queued("bob")) == W
    link = Link(a, Engine("bob"), clock).connect()
    run(link, storage, [])
    assert [m.uuid for m in link.b.received] == [m.uuid for m in old + new]


def test_a_read_that_runs_before_the_spilled_rows_are_applied_does_not_lose_them(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    # async I/O: a read may run while a batch with spilled rows waits
    a, _ = restored(storage, clock)
    ms = persistent(b"m", 2 * W)
    for m in ms:
        a.send_message("bob", m, clock.now)
    held = a.take_storage_batch()  # not applied yet
    assert held is not None and len(held.spill) == W
    link = Link(a, Engine("bob"), clock).connect()
    link.pump()
    requests = a.fill_requests()
    assert requests  # the head went out: the spilled rows are wanted
    for r in requests:
        assert a.filled(r, storage.read_queue(r.ident, r.after, r.end, r.count), clock.now) == []
    storage.apply(held)
    run(link, storage, [])
    assert [m.uuid for m in link.b.received] == [m.uuid for m in ms]
    assert storage.load().queues == {}


def test_spilled_rows_keep_the_deadline_they_had_when_sent(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    a, _ = restored(storage, clock)
    first = persistent(b"f", W, ttl=10.0)
    send_all(a, storage, clock, first)  # in memory, run out at 10
    clock.advance(5)
    later = persistent(b"l", W, ttl=10.0)
    send_all(a, storage, clock, later)  # on disk, run out at 15
    clock.advance(6)
    events = a.handle_timeout(clock.now) + serve(a, storage, clock)[1]
    assert events == [MessageDropped("bob", m.uuid) for m in first]
    link = Link(a, Engine("bob"), clock).connect()
    run(link, storage, [])
    assert [(m.uuid, m.ttl) for m in link.b.received] == [(m.uuid, 4.0) for m in later]
    assert storage.load().queues == {}


def test_a_non_persistent_message_waits_for_the_spilled_ones_sent_before_it(
    storage: SqliteQueuesStorage, clock: Clock
) -> None:
    a, _ = restored(storage, clock)
    head = persistent(b"h", W)
    spilled = persistent(b"s", 2)
    volatile = Message(b"v", ttl=None)
    after = persistent(b"a", 2)
    send_all(a, storage, clock, [*head, *spilled, volatile, *after])
    link = Link(a, Engine("bob"), clock).connect()
    run(link, storage, [])
    # documented: persistent ones sent after it go to disk and overtake it
    assert [m.uuid for m in link.b.received] == [
        m.uuid for m in [*head, *spilled, *after, volatile]
    ]


def test_purge_deletes_the_spilled_rows(storage: SqliteQueuesStorage, clock: Clock) -> None:
    a, _ = restored(storage, clock)
    ms = persistent(b"m", 3 * W)
    send_all(a, storage, clock, ms)
    assert a.purge("bob") == [m.uuid for m in ms[:W]]
    serve(a, storage, clock)
    assert storage.load().queues == {}
    assert a.queue_idents() == []
    send_all(a, storage, clock, ms[:2])  # a new queue, in memory again
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in ms[:2]]
