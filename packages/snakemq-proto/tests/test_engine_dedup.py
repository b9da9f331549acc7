"""De-duplication's bounds: ``2 * window`` uuids per peer, kept while the peer
is connected or gone less than ``dedup_linger`` seconds."""

from __future__ import annotations

import os
import tracemalloc

import pytest
from helpers import Clock, Link, of_type
from snakemq_proto import (
    DEFAULT_DEDUP_LINGER,
    Engine,
    Event,
    MemoryQueuesStorage,
    Message,
    MessageDelivered,
)
from snakemq_proto._engine import FORGET_BATCH
from snakemq_proto._window import PeerWindow, ReceiveWindow


@pytest.fixture
def clock() -> Clock:
    return Clock()


def pair(clock: Clock, a: Engine, b: Engine, **kw: bool) -> Link:
    link = Link(a, b, clock, **kw).connect()
    link.pump()
    return link


def _handed_then_ack_lost(clock: Clock, a: Engine, b: Engine) -> list[Message]:
    """alice sends 3 messages, bob hands them, the connection drops before
    his ack reaches alice: she will resend them."""
    link = pair(clock, a, b)
    sent = [Message(bytes([i]), ttl=None) for i in range(3)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    assert len(link.b.received) == 3
    link.disconnect()
    return sent


def test_dedup_linger_is_checked() -> None:
    assert Engine("bob").dedup_linger == DEFAULT_DEDUP_LINGER == 600.0
    with pytest.raises(ValueError, match="dedup_linger"):
        Engine("bob", dedup_linger=0)
    with pytest.raises(TypeError, match="dedup_linger"):
        Engine("bob", dedup_linger="1")  # type: ignore[arg-type]


def test_a_peer_back_within_dedup_linger_gets_its_resend_deduplicated(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", dedup_linger=60)
    sent = _handed_then_ack_lost(clock, a, b)
    assert b.next_deadline() == clock.now + 60  # the window's deadline
    clock.advance(59.9)
    b.handle_timeout(clock.now)
    link2 = pair(clock, a, b)
    assert link2.b.received == []  # the resend: duplicates, acknowledged
    assert [e.uuid for e in of_type(link2.a.events, MessageDelivered)] == [m.uuid for m in sent]
    assert b.next_deadline() is None  # connected: nothing to forget


def test_a_gone_peers_window_is_forgotten_after_dedup_linger(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", dedup_linger=60)
    sent = _handed_then_ack_lost(clock, a, b)
    clock.advance(60)
    b.handle_timeout(clock.now)
    assert b._windows == {} and b._gone == {} and b._queues == {}
    assert b.next_deadline() is None
    # the promise is bounded: a resend later than that is handed again
    link2 = pair(clock, a, b)
    assert link2.b.received == sent


def test_each_disconnect_restarts_the_linger(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", dedup_linger=60)
    _handed_then_ack_lost(clock, a, b)
    clock.advance(50)
    pair(clock, a, b).disconnect()  # back, and gone again 50 s later
    clock.advance(50)
    b.handle_timeout(clock.now)
    assert "alice" in b._windows
    clock.advance(10)
    b.handle_timeout(clock.now)
    assert "alice" not in b._windows


def test_a_window_still_waiting_for_handed_is_kept(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", dedup_linger=60)
    link = pair(clock, a, b, auto_hand=False)
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    link.disconnect()  # the application has not taken it yet
    clock.advance(60)
    b.handle_timeout(clock.now)
    assert "alice" in b._windows  # forgetting it would hand the resend twice
    link.b.hand()
    link2 = pair(clock, a, b)
    assert link2.b.received == []
    assert of_type(link2.a.events, MessageDelivered) == [MessageDelivered("bob", m.uuid)]


def test_a_window_loaded_from_a_storage_lingers_from_the_load(clock: Clock) -> None:
    storage = MemoryQueuesStorage()
    a, b = Engine("alice"), Engine("bob", persistent=True)
    _handed_then_ack_lost(clock, a, b)
    batch = b.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    b2 = Engine("bob", persistent=True, dedup_linger=60)
    state = storage.load()
    b2.load(state.queues, state.seen, clock.now)
    assert b2.next_deadline() == clock.now + 60
    link2 = pair(clock, a, b2)
    assert link2.b.received == []
    link2.disconnect()
    clock.advance(60)
    b2.handle_timeout(clock.now)
    assert b2._windows == {}


def test_many_gone_peers_are_forgotten_in_bounded_calls(clock: Clock) -> None:
    # 2.5 x FORGET_BATCH short-lived peers, each sent one message and left
    bob = Engine("bob", dedup_linger=30)
    for i in range(FORGET_BATCH * 5 // 2):
        sender = Engine(f"s{i}")
        link = pair(clock, sender, bob)
        sender.send_message("bob", Message(b"x", ttl=None), clock.now)
        link.pump()
        link.disconnect()
    assert len(bob._windows) == FORGET_BATCH * 5 // 2
    clock.advance(30)
    calls = 0
    while (deadline := bob.next_deadline()) is not None:
        assert deadline <= clock.now
        before = len(bob._windows)
        bob.handle_timeout(clock.now)
        assert before - len(bob._windows) <= FORGET_BATCH
        calls += 1
    assert calls == 3 and bob._windows == {} and bob._queues == {}


def test_twenty_thousand_gone_peers_cost_nothing_after_the_linger(clock: Clock) -> None:
    # receiving straight into the window (no sockets): each peer's window
    # holds one uuid, as after one message from a short-lived identifier
    bob = Engine("bob", dedup_linger=30)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            ident = f"s{i}"
            bob._window(ident).load([os.urandom(16)])
            bob._gone[ident] = clock.now
        held = tracemalloc.get_traced_memory()[0] - base
        clock.advance(30)
        while bob.next_deadline() is not None:
            bob.handle_timeout(clock.now)
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held > 20_000 * 200
    assert left < 20_000 * 8, (held, left)  # the dicts' tables may stay sized


def test_a_full_window_is_compact() -> None:
    keep = 8192
    window = PeerWindow(keep)
    rx = ReceiveWindow(window, 64)
    events: list[Event] = []
    raw = [bytearray(os.urandom(16)) for _ in range(3 * keep)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        worst = 0
        for i in range(0, len(raw), 7):  # received and handed 7 at a time
            rx.receive([Message(b"", uuid=bytes(u)) for u in raw[i : i + 7]], "c", "a", events)
            rx.handed(len(events), "a", None)
            rx.take_ack()
            events.clear()
            worst = max(worst, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert list(window.seen) == [bytes(u) for u in raw[-keep:]]
    # ~85 B per uuid (49 of them the bytes object); a dict trimmed from the
    # front without compaction grows its table to 121 B per uuid
    assert worst / keep < 100, worst / keep
