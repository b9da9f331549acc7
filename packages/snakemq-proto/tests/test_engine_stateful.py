"""Hypothesis drives two engines through random interleavings of sends,
partial transfers, disconnects, restarts, slow applications and time.

Whatever happens, once the dust settles every message alice sent to bob is
either delivered exactly once or dropped by its TTL, never lost; and alice
never has more messages unacknowledged on a connection than bob's window.
"""

from __future__ import annotations

from collections import Counter

from helpers import Clock, Link, Side
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from snakemq_proto import (
    FLAG_PERSISTENT,
    Ack,
    CloseConnection,
    Engine,
    Event,
    MemoryQueuesStorage,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageFrame,
    MessageSent,
    PacketDecoder,
    decode_frame,
)

WINDOW = 3


class Delivery(RuleBasedStateMachine):
    LEGACY = False  # bob behaves as snakeMQ 1.6 (no acks, no window, no de-dup)

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.a_store = MemoryQueuesStorage()
        self.b_store = MemoryQueuesStorage()
        self.a = Engine("alice", persistent=True)
        self.b = Engine("bob", persistent=True, window=WINDOW, legacy=self.LEGACY)
        self.link: Link | None = None
        self.past_links: list[Link] = []
        self.old_bs: list[Side] = []  # bob's ends of closed links (may hold unhanded messages)
        self.a_events: list[Event] = []  # alice's events outside of links
        self.sent: dict[bytes, Message] = {}
        self.handed: Counter[bytes] = Counter()  # what bob's application got
        self.in_flight_now = 0  # MESSAGE frames minus acked, on the current link

    # ------------------------------------------------------------------ plumbing

    def all_a_events(self) -> list[Event]:
        events = list(self.a_events)
        for link in [*self.past_links, *([self.link] if self.link else [])]:
            events += link.a.events
        return events

    def commit_storage(self) -> None:
        for engine, store in ((self.a, self.a_store), (self.b, self.b_store)):
            batch = engine.take_storage_batch()
            if batch is not None:
                store.apply(batch)

    def hand(self, side: Side) -> None:
        # the application takes every message bob's side has received
        start = len(side.received) - side.unhanded
        for m in side.received[start:]:
            self.handed[m.uuid] += 1
        side.hand()

    def move(self, src: Side, limit: int | None = None) -> None:
        assert self.link is not None
        data = src.engine.data_to_send(src.conn_id)
        if not data:
            return
        if limit is not None:
            data = data[:limit]
        decoder = PacketDecoder()
        for packet in decoder.feed(data):
            frame = decode_frame(packet)
            if src is self.link.a and isinstance(frame, MessageFrame):
                self.in_flight_now += 1
            elif src is self.link.b and isinstance(frame, Ack):
                self.in_flight_now -= frame.count
        dst = self.link.other(src)
        src.record(src.engine.data_sent(src.conn_id, len(data)))
        dst.record(dst.engine.receive_data(dst.conn_id, data, self.clock.now))

    def close_if_asked(self) -> None:
        link = self.link
        if link is not None and (link.a.close_requested or link.b.close_requested):
            self.drop_link()

    def drop_link(self) -> None:
        assert self.link is not None
        self.link.disconnect()
        self.past_links.append(self.link)
        self.old_bs.append(self.link.b)
        self.link = None
        self.in_flight_now = 0

    # --------------------------------------------------------------------- rules

    @rule(ttl=st.sampled_from([None, 0, 0.5, 1, 2.5, 10]), persistent=st.booleans())
    def send(self, ttl: float | None, persistent: bool) -> None:
        m = Message(b"m%d" % len(self.sent), ttl=ttl, flags=FLAG_PERSISTENT if persistent else 0)
        self.sent[m.uuid] = m
        self.a_events += self.a.send_message("bob", m, self.clock.now)
        self.commit_storage()

    @precondition(lambda self: self.link is None)
    @rule()
    def connect(self) -> None:
        self.link = Link(self.a, self.b, self.clock, auto_hand=False).connect()

    @precondition(lambda self: self.link is not None)
    @rule(from_alice=st.booleans())
    def transfer(self, from_alice: bool) -> None:
        assert self.link is not None
        self.move(self.link.a if from_alice else self.link.b)
        self.commit_storage()
        self.close_if_asked()

    @precondition(lambda self: self.link is not None)
    @rule(limit=st.integers(0, 200), from_alice=st.booleans())
    def reset_mid_write(self, limit: int, from_alice: bool) -> None:
        assert self.link is not None
        self.move(self.link.a if from_alice else self.link.b, limit)
        self.drop_link()
        self.commit_storage()

    @precondition(lambda self: self.link is not None)
    @rule()
    def disconnect(self) -> None:
        self.drop_link()
        self.commit_storage()

    @rule(which=st.integers(0, 5))
    def application_takes(self, which: int) -> None:
        sides = [*self.old_bs, *([self.link.b] if self.link else [])]
        if sides:
            self.hand(sides[which % len(sides)])
            self.commit_storage()

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def time_passes(self, seconds: float) -> None:
        now = self.clock.advance(seconds)
        a_events = self.a.handle_timeout(now)
        b_events = self.b.handle_timeout(now)
        self.a_events += a_events
        if self.link is not None and any(
            isinstance(e, CloseConnection) for e in a_events + b_events
        ):
            self.drop_link()  # handshake timeout: the I/O layer closes the socket
        self.commit_storage()

    @precondition(lambda self: all(s.unhanded == 0 for s in self.old_bs))
    @rule()
    def restart_bob(self) -> None:
        # bob's process dies and comes back; what he handed is in his storage
        if self.link is not None:
            if self.link.b.unhanded:
                return
            self.link.a.record(self.a.connection_lost(self.link.a.conn_id, self.clock.now))
            self.past_links.append(self.link)
            self.link = None
            self.in_flight_now = 0
        self.old_bs = []
        self.b = Engine("bob", persistent=True, window=WINDOW, legacy=self.LEGACY)
        state = self.b_store.load()
        self.b.load(state.queues, state.seen, self.clock.now)

    @rule()
    def restart_alice(self) -> None:
        # only persistent messages survive; do it only when every queued one is
        if any(not m.persistent or m.ttl == 0 for m in self.a.queued("bob")):
            return
        if self.link is not None:
            self.link.b.record(self.b.connection_lost(self.link.b.conn_id, self.clock.now))
            self.past_links.append(self.link)
            self.old_bs.append(self.link.b)
            self.link = None
            self.in_flight_now = 0
        self.a = Engine("alice", persistent=True)
        state = self.a_store.load()
        self.a_events += self.a.load(state.queues, state.seen, self.clock.now)
        self.commit_storage()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def flow_control(self) -> None:
        if not self.LEGACY:
            assert self.in_flight_now <= WINDOW

    @invariant()
    def at_most_once(self) -> None:
        assert all(n == 1 for n in self.handed.values()), self.handed

    def teardown(self) -> None:
        # let everything settle: the application takes everything, the link is up
        for side in self.old_bs:
            self.hand(side)
        if self.link is None:
            self.connect()
        assert self.link is not None
        for _ in range(200):
            self.move(self.link.a)
            self.move(self.link.b)
            self.hand(self.link.b)
            self.commit_storage()
            if not (
                self.a.wants_write(self.link.a.conn_id) or self.b.wants_write(self.link.b.conn_id)
            ):
                break
        assert not (self.link.a.close_requested or self.link.b.close_requested)
        assert self.a.queued("bob") == []

        outcome: Counter[bytes] = Counter()
        delivered = set()
        dropped = set()
        # a message leaves alice's queue when acknowledged (capable bob) or
        # when its packet was completely written (legacy bob)
        gone = MessageSent if self.LEGACY else MessageDelivered
        for event in self.all_a_events():
            if isinstance(event, gone):
                outcome[event.uuid] += 1
                delivered.add(event.uuid)
            elif isinstance(event, MessageDropped):
                outcome[event.uuid] += 1
                dropped.add(event.uuid)
        if self.LEGACY:
            for uuid in self.sent:
                assert self.handed[uuid] <= 1
                assert outcome[uuid] == 1, (self.sent[uuid], outcome[uuid])
                if self.handed[uuid]:
                    assert uuid in delivered, self.sent[uuid]
                # 1.6 semantics: written but lost in transit (a reset) is gone
            assert self.a_store.load().queues == {}
            return
        for uuid in self.sent:
            assert self.handed[uuid] <= 1
            assert outcome[uuid] == 1, (self.sent[uuid], outcome[uuid])
            if uuid in delivered:
                assert self.handed[uuid] == 1, self.sent[uuid]
            if self.handed[uuid] == 0:
                assert uuid in dropped, ("lost", self.sent[uuid])
        # storage holds nothing for delivered or dropped messages
        assert self.a_store.load().queues == {}


class LegacyDelivery(Delivery):
    LEGACY = True


_settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDelivery = Delivery.TestCase
TestDelivery.settings = _settings
TestLegacyDelivery = LegacyDelivery.TestCase
TestLegacyDelivery.settings = settings(_settings, max_examples=150)
