"""The engine: bytes in, events out, over a fake network and a fake clock."""

from __future__ import annotations

import struct

import pytest
from helpers import Clock, Link, frames_of, of_type, packets
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemq_proto import (
    CAP_ACK,
    DEFAULT_WINDOW,
    FLAG_PERSISTENT,
    Ack,
    Capabilities,
    CloseConnection,
    DuplicateIdentError,
    Engine,
    ErrorOccurred,
    Event,
    HandshakeTimeoutError,
    Identification,
    IdentityMismatchError,
    IncompatibleProtocol,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
    LocalProtocolError,
    MalformedFrameError,
    MemoryQueuesStorage,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageFrame,
    MessageReceived,
    MessageSent,
    PacketTooLargeError,
    PeerConnected,
    PeerDisconnected,
    Ping,
    Pong,
    ProtocolVersion,
    RemoteProtocolError,
    SlowReaderError,
    UnexpectedFrameError,
)

UUID = bytes(range(16))
# what a snakeMQ 1.6 peer "bob" writes on connect: PROTOCOL_VERSION, IDENTIFICATION
LEGACY_HELLO = bytes.fromhex("0000000500000000010000000402626f62")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def pair(clock: Clock, a: Engine | None = None, b: Engine | None = None, **kw: bool) -> Link:
    link = Link(a or Engine("alice"), b or Engine("bob"), clock, **kw)
    link.connect()
    link.pump()
    return link


def errors(events: object) -> list[ErrorOccurred]:
    assert isinstance(events, list)
    return of_type(events, ErrorOccurred)


# -------------------------------------------------------------------- handshake


def test_handshake_between_capable_engines(clock: Clock) -> None:
    a, b = Engine("alice", window=7), Engine("bob")
    link = Link(a, b, clock).connect()
    hello = frames_of(a.data_to_send(link.a.conn_id))
    assert hello == [ProtocolVersion(1), Capabilities(CAP_ACK, 7), Identification("alice")]
    a.data_sent(link.a.conn_id, 0)
    # deliver alice's hello to bob by hand
    stream = packets(ProtocolVersion(1), Capabilities(CAP_ACK, 7), Identification("alice"))
    link.b.record(b.receive_data(link.b.conn_id, stream, clock.now))
    assert link.b.events == [PeerConnected(link.b.conn_id, "alice", legacy=False)]
    link.pump()
    assert link.a.events == [PeerConnected(link.a.conn_id, "bob", legacy=False)]
    assert a.connected_idents() == {"bob": link.a.conn_id}
    assert b.conn_ident(link.b.conn_id) == "alice"


def test_messages_both_directions(clock: Clock) -> None:
    link = pair(clock)
    a, b = link.a.engine, link.b.engine
    m1, m2 = Message(b"to bob", ttl=5), Message(b"to alice", ttl=None, flags=3)
    assert a.send_message("bob", m1, clock.now) == []
    assert b.send_message("alice", m2, clock.now) == []
    link.pump()
    assert link.b.received == [Message(b"to bob", ttl=5.0, uuid=m1.uuid)]
    assert link.a.received == [m2]
    assert of_type(link.a.events, MessageSent) == [MessageSent(link.a.conn_id, "bob", m1.uuid)]
    assert of_type(link.a.events, MessageDelivered) == [MessageDelivered("bob", m1.uuid)]
    assert of_type(link.b.events, MessageDelivered) == [MessageDelivered("alice", m2.uuid)]
    assert a.queued("bob") == [] and b.queued("alice") == []


def test_messages_queued_before_connect_are_delivered_in_order(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    sent = [Message(str(i).encode(), ttl=None) for i in range(50)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    link = pair(clock, a, b)
    assert [m.uuid for m in link.b.received] == [m.uuid for m in sent]
    assert [e.uuid for e in of_type(link.a.events, MessageDelivered)] == [m.uuid for m in sent]


def test_capable_engine_and_legacy_engine_agree_on_legacy(clock: Clock) -> None:
    link = pair(clock, Engine("alice"), Engine("bob", legacy=True))
    assert of_type(link.a.events, PeerConnected)[0].legacy
    assert of_type(link.b.events, PeerConnected)[0].legacy
    m = Message(b"x", ttl=None)
    link.a.engine.send_message("bob", m, clock.now)
    link.b.engine.send_message("alice", Message(b"y", ttl=None), clock.now)
    link.pump()
    assert [x.data for x in link.b.received] == [b"x"]
    assert [x.data for x in link.a.received] == [b"y"]
    # no acknowledgements in either direction; sent means written
    assert of_type(link.a.events, MessageDelivered) == []
    assert of_type(link.a.events, MessageSent) == [MessageSent(link.a.conn_id, "bob", m.uuid)]
    assert link.a.engine.queued("bob") == []


def test_legacy_engine_sends_no_capabilities(clock: Clock) -> None:
    e = Engine("bob", legacy=True)
    e.connection_made("c", clock.now)
    assert e.data_to_send("c") == LEGACY_HELLO


# ------------------------------------------------------- a scripted 1.6 peer


def legacy_conn(clock: Clock, engine: Engine | None = None) -> Engine:
    e = engine or Engine("alice")
    e.connection_made("c", clock.now)
    hello = e.data_to_send("c")
    assert frames_of(hello) == [
        ProtocolVersion(1),
        Capabilities(CAP_ACK, e.window),
        Identification("alice"),
    ]
    e.data_sent("c", len(hello))
    assert e.receive_data("c", LEGACY_HELLO, clock.now) == [PeerConnected("c", "bob", True)]
    return e


def test_legacy_peer_message_leaves_queue_only_when_completely_written(clock: Clock) -> None:
    e = legacy_conn(clock)
    m = Message(b"hello", ttl=60, flags=FLAG_PERSISTENT, uuid=UUID)
    e.send_message("bob", m, clock.now)
    data = e.data_to_send("c")
    # byte for byte what 1.6 writes for this message
    assert data == bytes.fromhex(
        "0000001e03000102030405060708090a0b0c0d0e0f0000003c0000000168656c6c6f"
    )
    assert e.data_sent("c", len(data) - 1) == []
    assert e.queued("bob") == [m]
    assert e.data_sent("c", 1) == [MessageSent("c", "bob", UUID)]
    assert e.queued("bob") == []
    assert e.data_to_send("c") == b""


def test_legacy_peer_unwritten_message_is_resent_after_reconnect(clock: Clock) -> None:
    e = legacy_conn(clock)
    m = Message(b"hello", ttl=None, uuid=UUID)
    e.send_message("bob", m, clock.now)
    data = e.data_to_send("c")
    e.data_sent("c", 10)  # the connection resets mid-packet
    assert e.connection_lost("c", clock.now) == [PeerDisconnected("c", "bob")]
    assert e.queued("bob") == [m]
    e.connection_made("c2", clock.now)
    e.data_to_send("c2")
    e.receive_data("c2", LEGACY_HELLO, clock.now)
    assert e.data_to_send("c2") == data


def test_legacy_peer_gets_no_acks_and_may_not_send_them(clock: Clock) -> None:
    e = legacy_conn(clock)
    frame = MessageFrame(UUID, 30, 0, b"from 1.6").encode()
    events = e.receive_data("c", packets(frame), clock.now)
    assert events == [MessageReceived("c", "bob", Message(b"from 1.6", ttl=30, uuid=UUID))]
    e.handed("c", 1)
    assert e.data_to_send("c") == b""
    # a 1.6 peer has no de-duplication window: the same uuid is delivered again
    assert len(of_type(e.receive_data("c", packets(frame), clock.now), MessageReceived)) == 1
    events = e.receive_data("c", packets(Ack(1, UUID)), clock.now)
    assert [type(x.error) for x in errors(events)] == [UnexpectedFrameError]
    assert events[-1] == CloseConnection("c")


def test_legacy_peer_ping_is_answered(clock: Clock) -> None:
    e = legacy_conn(clock)
    assert e.receive_data("c", packets(Ping()), clock.now) == []
    assert frames_of(e.data_to_send("c")) == [Pong()]


def test_legacy_peer_ignores_nothing_we_cannot_send_it(clock: Clock) -> None:
    # towards a legacy peer only 1.6 frame types ever go out (after the hello)
    e = Engine("alice", keepalive_interval=1.0)
    e = legacy_conn(clock, e)
    e.send_message("bob", Message(b"x", ttl=None), clock.now)
    e.receive_data("c", packets(MessageFrame(UUID, None, 0, b"y").encode()), clock.now)
    e.handed("c", 1)
    e.handle_timeout(clock.advance(1.0))
    types = {type(f) for f in frames_of(e.data_to_send("c"))}
    assert types == {MessageFrame, Ping}


def test_unknown_frame_types_are_ignored(clock: Clock) -> None:
    e = legacy_conn(clock)
    assert e.receive_data("c", packets(b"\x07future", b"\x42", b"\xff\x00"), clock.now) == []
    m = MessageFrame(UUID, 1, 0, b"still fine").encode()
    assert len(of_type(e.receive_data("c", packets(m), clock.now), MessageReceived)) == 1


# -------------------------------------------- acknowledgement, resend, de-dup


def test_receiver_acks_only_after_handed(clock: Clock) -> None:
    link = pair(clock, auto_hand=False)
    a = link.a.engine
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    link.pump()
    assert len(link.b.received) == 1
    assert of_type(link.a.events, MessageDelivered) == []
    assert a.queued("bob") == [m]  # written, not yet handed: still queued
    link.b.hand()
    link.pump()
    assert of_type(link.a.events, MessageDelivered) == [MessageDelivered("bob", m.uuid)]
    assert a.queued("bob") == []


def test_acks_are_cumulative_and_batched(clock: Clock) -> None:
    link = pair(clock, auto_hand=False)
    a, b = link.a.engine, link.b.engine
    sent = [Message(bytes([i]), ttl=None) for i in range(5)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    link.b.hand()
    assert frames_of(b.data_to_send(link.b.conn_id)) == [Ack(5, sent[-1].uuid)]


def test_in_flight_messages_are_resent_after_reconnect_and_duplicates_dropped(
    clock: Clock,
) -> None:
    a, b = Engine("alice"), Engine("bob")
    link = pair(clock, a, b)
    sent = [Message(bytes([i]), ttl=None) for i in range(3)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    link.transfer(link.a)  # bob receives and hands all three ...
    assert len(link.b.received) == 3
    link.disconnect()  # ... but his ack never reaches alice
    assert of_type(link.a.events, MessageDelivered) == []
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in sent]

    link2 = pair(clock, a, b)
    assert link2.b.received == []  # duplicates never produce MessageReceived
    assert [e.uuid for e in of_type(link2.a.events, MessageDelivered)] == [m.uuid for m in sent]
    assert a.queued("bob") == []


def test_resend_mixes_duplicates_and_new_messages_in_order(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    link = pair(clock, a, b)
    first = [Message(b"1", ttl=None), Message(b"2", ttl=None)]
    for m in first:
        a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    link.disconnect()
    later = [Message(b"3", ttl=None), Message(b"4", ttl=None)]
    for m in later:
        a.send_message("bob", m, clock.now)
    link2 = pair(clock, a, b)
    assert [m.data for m in link2.b.received] == [b"3", b"4"]
    assert len(of_type(link2.a.events, MessageDelivered)) == 4


def test_message_lost_in_transit_is_resent(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    link = pair(clock, a, b)
    m = Message(b"x" * 100, ttl=None)
    a.send_message("bob", m, clock.now)
    link.transfer(link.a, limit=50)  # half of the packet, then the reset
    link.disconnect()
    # alice's I/O layer reported the 50 bytes as written; the message is not sent
    assert of_type(link.a.events, MessageSent) == []
    link2 = pair(clock, a, b)
    assert link2.b.received == [m]


def test_handed_after_disconnect_still_counts_for_dedup(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    link = pair(clock, a, b, auto_hand=False)
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    link.disconnect()
    link.b.hand()  # the application took it after the socket went away
    link2 = pair(clock, a, b)
    assert link2.b.received == []
    assert of_type(link2.a.events, MessageDelivered) == [MessageDelivered("bob", m.uuid)]


def test_duplicate_of_unhanded_message_is_not_acked_before_it_is_handed(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    link = pair(clock, a, b, auto_hand=False)
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    link.disconnect()  # bob's application has not taken the message yet
    link2 = pair(clock, a, b, auto_hand=False)
    assert link2.b.received == []  # the resend is a duplicate
    assert of_type(link2.a.events, MessageDelivered) == []  # not handed: no ack yet
    link.b.hand()  # now the application takes the original
    link2.pump()
    assert of_type(link2.a.events, MessageDelivered) == [MessageDelivered("bob", m.uuid)]
    assert a.queued("bob") == []


def test_handed_more_than_received_is_a_local_error(clock: Clock) -> None:
    link = pair(clock, auto_hand=False)
    link.a.engine.send_message("bob", Message(b"x", ttl=None), clock.now)
    link.pump()
    with pytest.raises(LocalProtocolError, match="handed"):
        link.b.engine.handed(link.b.conn_id, 2)


def test_ack_of_messages_not_in_flight_is_refused(clock: Clock) -> None:
    link = pair(clock)
    b = link.b.engine
    events = link.a.engine.receive_data(link.a.conn_id, packets(Ack(1, UUID)), clock.now)
    assert [type(e.error) for e in errors(events)] == [MalformedFrameError]
    assert b.connected_idents() == {"alice": link.b.conn_id}


def test_ack_naming_the_wrong_uuid_is_refused(clock: Clock) -> None:
    link = pair(clock)
    a = link.a.engine
    a.send_message("bob", Message(b"x", ttl=None), clock.now)
    a.data_to_send(link.a.conn_id)
    events = a.receive_data(link.a.conn_id, packets(Ack(1, UUID)), clock.now)
    assert [type(e.error) for e in errors(events)] == [MalformedFrameError]


def test_ack_before_data_sent_reports_sent_then_delivered(clock: Clock) -> None:
    # async I/O: the peer's ack can be processed before our write completes
    link = pair(clock)
    a, b = link.a.engine, link.b.engine
    sent = [Message(bytes([i]), ttl=None) for i in range(3)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    data = a.data_to_send(link.a.conn_id)
    b.receive_data(link.b.conn_id, data, clock.now)
    b.handed(link.b.conn_id, 3)
    events = a.receive_data(link.a.conn_id, b.data_to_send(link.b.conn_id), clock.now)
    events += a.data_sent(link.a.conn_id, len(data))
    kinds = [(type(e).__name__, getattr(e, "uuid", None)) for e in events]
    expected = []
    for m in sent:
        expected += [("MessageSent", m.uuid), ("MessageDelivered", m.uuid)]
    assert kinds == expected


# ---------------------------------------------------------------- flow control


def test_never_more_than_the_remote_window_unacknowledged(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=3)
    link = pair(clock, a, b, auto_hand=False)
    for i in range(10):
        a.send_message("bob", Message(bytes([i]), ttl=None), clock.now)
    link.pump()
    assert len(link.b.received) == 3
    assert not a.wants_write(link.a.conn_id)
    link.b.engine.handed(link.b.conn_id, 1)
    link.b.unhanded -= 1
    link.pump()
    assert len(link.b.received) == 4
    while len(link.b.received) < 10:
        delivered = len(of_type(link.a.events, MessageDelivered))
        assert len(link.b.received) - delivered <= 3
        link.b.hand()
        link.pump()
    link.b.hand()
    link.pump()
    assert len(of_type(link.a.events, MessageDelivered)) == 10


def test_output_is_limited_by_the_high_water_mark(clock: Clock) -> None:
    link = pair(clock)
    a = link.a.engine
    for _ in range(10):
        a.send_message("bob", Message(b"x" * 1000, ttl=None), clock.now)
    first = a.data_to_send(link.a.conn_id, limit=2500)
    assert 2500 <= len(first) < 3600
    assert a.wants_write(link.a.conn_id)


# ------------------------------------------------------------------------ TTL


def test_ttl_0_to_a_disconnected_peer_is_dropped_at_once(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    m = Message(b"x", ttl=0, flags=FLAG_PERSISTENT)
    assert a.send_message("bob", m, clock.now) == [MessageDropped("bob", m.uuid)]
    assert a.queued("bob") == []
    assert a.take_storage_batch() is None


def test_ttl_0_to_a_connected_peer_is_delivered(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    link = pair(clock, a)
    m = Message(b"x", ttl=0, flags=FLAG_PERSISTENT)
    assert a.send_message("bob", m, clock.now) == []
    assert a.take_storage_batch() is None  # ttl=0 is never stored
    link.pump()
    assert link.b.received == [m]


def test_ttl_0_in_queue_is_dropped_when_the_peer_disconnects(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    link = pair(clock, a, b, auto_hand=False)
    a.send_message("bob", Message(b"1", ttl=None), clock.now)
    m = Message(b"2", ttl=0)
    a.send_message("bob", m, clock.now)
    link.pump()  # window 1: the ttl=0 message waits behind the first
    link.disconnect()
    assert MessageDropped("bob", m.uuid) in link.a.events


def test_fractional_ttl_expires_exactly_at_its_deadline(clock: Clock) -> None:
    a = Engine("alice")
    t0 = clock.now
    m = Message(b"x", ttl=0.25)
    assert a.send_message("bob", m, t0) == []
    assert a.next_deadline() == t0 + 0.25
    assert a.handle_timeout(t0 + 0.2499) == []
    assert a.queued("bob") == [m]
    assert a.handle_timeout(t0 + 0.25) == [MessageDropped("bob", m.uuid)]
    assert a.queued("bob") == []
    assert a.next_deadline() is None


def test_connect_just_before_the_deadline_delivers_with_wire_ttl_0(clock: Clock) -> None:
    a = Engine("alice")
    m = Message(b"x", ttl=0.25)
    a.send_message("bob", m, clock.now)
    clock.advance(0.2499)
    link = pair(clock, a)
    assert [(x.uuid, x.ttl) for x in link.b.received] == [(m.uuid, 0.0)]


def test_connect_at_the_deadline_without_a_timer_run_drops(clock: Clock) -> None:
    a = Engine("alice")
    m = Message(b"x", ttl=2)
    a.send_message("bob", m, clock.now)
    clock.advance(2)
    link = pair(clock, a)
    assert link.b.received == []
    assert of_type(link.a.events, MessageDropped) == [MessageDropped("bob", m.uuid)]


def test_infinite_ttl_never_expires(clock: Clock) -> None:
    a = Engine("alice")
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    assert a.next_deadline() is None
    assert a.handle_timeout(clock.now + 10**9) == []
    link = pair(clock, a)
    assert [(x.uuid, x.ttl) for x in link.b.received] == [(m.uuid, None)]


def test_receiver_sees_the_remaining_ttl_in_whole_seconds(clock: Clock) -> None:
    a = Engine("alice")
    a.send_message("bob", Message(b"x", ttl=10), clock.now)
    clock.advance(3.5)
    link = pair(clock, a)
    assert [x.ttl for x in link.b.received] == [6.0]


def test_ttl_counts_from_the_disconnect_when_queued_while_connected(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    link = pair(clock, a, b, auto_hand=False)
    a.send_message("bob", Message(b"blocker", ttl=None), clock.now)
    m = Message(b"x", ttl=5)
    a.send_message("bob", m, clock.now)
    link.pump()
    clock.advance(100)  # connected: no aging
    assert a.handle_timeout(clock.now) == []
    link.disconnect()
    t_disc = clock.now
    assert a.next_deadline() == t_disc + 5
    assert a.handle_timeout(t_disc + 4.999) == []
    assert a.handle_timeout(t_disc + 5) == [MessageDropped("bob", m.uuid)]


def test_ttl_counts_from_queueing_when_queued_after_the_disconnect(clock: Clock) -> None:
    a = Engine("alice")
    link = pair(clock, a)
    link.disconnect()
    clock.advance(100)
    m = Message(b"x", ttl=5)
    a.send_message("bob", m, clock.now)
    assert a.handle_timeout(clock.now + 4.999) == []
    assert a.handle_timeout(clock.now + 5) == [MessageDropped("bob", m.uuid)]


def test_time_connected_does_not_age(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    t0 = clock.now
    a.send_message("bob", Message(b"blocker", ttl=None), t0)
    m = Message(b"x", ttl=10)
    a.send_message("bob", m, t0)
    clock.advance(4)  # 4 s disconnected: 6 s remain
    link = pair(clock, a, b, auto_hand=False)
    clock.advance(1000)  # connected, m stuck behind the window
    assert a.handle_timeout(clock.now) == []
    assert a.queued("bob")[1].ttl == 6
    link.disconnect()
    t_disc = clock.now
    assert a.handle_timeout(t_disc + 5.999) == []
    assert a.handle_timeout(t_disc + 6) == [MessageDropped("bob", m.uuid)]


def test_expired_message_reported_once_and_removed_from_storage(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    m = Message(b"x", ttl=1, flags=FLAG_PERSISTENT)
    a.send_message("bob", m, clock.now)
    batch = a.take_storage_batch()
    assert batch is not None and batch.push == [("bob", m)]
    assert a.handle_timeout(clock.now + 1) == [MessageDropped("bob", m.uuid)]
    assert a.handle_timeout(clock.now + 2) == []
    batch = a.take_storage_batch()
    assert batch is not None and batch.delete == [m.uuid]


def test_mass_expiry_is_spread_over_bounded_calls_in_order(clock: Clock) -> None:
    """Issue 14: many messages running out together are dropped a bounded
    number per ``handle_timeout()``, ``next_deadline()`` staying due until
    the last one, each exactly once, in the order they ran out, and each
    call's storage deletes are one bounded batch."""
    from snakemq_proto._queue import EXPIRE_BATCH

    a = Engine("alice", persistent=True)
    t0 = clock.now
    n = 3 * EXPIRE_BATCH + 17
    # two peers interleaved, the later-queued ones running out first
    sent = [
        (ident, Message(str(i).encode(), ttl=2.0 - i / (4 * n), flags=FLAG_PERSISTENT))
        for i in range(n)
        for ident in ("bob", "carol")
    ]
    for ident, m in sent:
        a.send_message(ident, m, t0)
    assert a.take_storage_batch() is not None
    expected = sorted(sent, key=lambda s: s[1].ttl or 0.0)
    now = t0 + 5
    dropped: list[MessageDropped] = []
    calls = 0
    while (deadline := a.next_deadline()) is not None:
        assert deadline <= now
        events = a.handle_timeout(now)
        calls += 1
        assert 0 < len(events) <= EXPIRE_BATCH
        batch = a.take_storage_batch()
        assert batch is not None and len(batch.delete) == len(events)
        dropped += of_type(events, MessageDropped)
        assert calls <= 2 * n
    assert calls == -(-2 * n // EXPIRE_BATCH)
    assert dropped == [MessageDropped(ident, m.uuid) for ident, m in expected]
    assert a.queued("bob") == a.queued("carol") == []
    assert a.handle_timeout(now) == []


def test_partial_expiry_keeps_the_rest_of_the_queue_in_order(clock: Clock) -> None:
    """Messages with longer TTLs stay queued, in order, around the bounded drops."""
    from snakemq_proto._queue import EXPIRE_BATCH

    a = Engine("alice")
    t0 = clock.now
    n = 2 * EXPIRE_BATCH + 5
    sent = [Message(str(i).encode(), ttl=1 if i % 3 else 100) for i in range(n)]
    for m in sent:
        a.send_message("bob", m, t0)
    while (deadline := a.next_deadline()) is not None and deadline <= t0 + 2:
        a.handle_timeout(t0 + 2)
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in sent[::3]]


# ------------------------------------------------------------------ keepalive


def test_keepalive_ping_pong(clock: Clock) -> None:
    a = Engine("alice", keepalive_interval=10, keepalive_wait=2)
    link = pair(clock, a)
    t0 = clock.now
    assert a.next_deadline() == t0 + 10
    assert a.handle_timeout(t0 + 9.999) == []
    assert a.data_to_send(link.a.conn_id) == b""
    clock.advance(10)
    assert a.handle_timeout(clock.now) == []
    assert frames_of(a.data_to_send(link.a.conn_id)) == [Ping()]
    a.data_sent(link.a.conn_id, 5)
    assert a.next_deadline() == clock.now + 2
    link.b.record(link.b.engine.receive_data(link.b.conn_id, packets(Ping()), clock.now))
    pong = link.b.engine.data_to_send(link.b.conn_id)
    assert frames_of(pong) == [Pong()]
    clock.advance(1)
    assert a.receive_data(link.a.conn_id, pong, clock.now) == []
    assert a.next_deadline() == clock.now + 10
    assert a.handle_timeout(clock.now + 2) == []


def test_read_moved_deadline_only_when_a_read_brings_the_deadline_forward(
    clock: Clock,
) -> None:
    # wait > interval: an answered ping brings the next ping before the pong's deadline
    a = Engine("alice", keepalive_interval=10, keepalive_wait=20)
    link = pair(clock, a)
    conn = link.a.conn_id
    a.next_deadline()  # what a timer sleeps until
    clock.advance(1)
    link.b.engine.send_message("alice", Message(b"x", ttl=None), clock.now)
    link.pump()
    assert not a.read_moved_deadline(conn)  # it only moved the next ping later
    clock.advance(10)
    a.handle_timeout(clock.now)
    assert frames_of(a.data_to_send(conn)) == [Ping()]
    a.data_sent(conn, 5)
    assert a.next_deadline() == clock.now + 20
    link.b.record(link.b.engine.receive_data(link.b.conn_id, packets(Ping()), clock.now))
    clock.advance(1)
    a.receive_data(conn, link.b.engine.data_to_send(link.b.conn_id), clock.now)
    assert a.read_moved_deadline(conn)  # next ping at +10, before the pong's +19
    assert a.next_deadline() == clock.now + 10
    assert a.read_moved_deadline("no such connection")  # unknown: wake, as before


def test_any_received_bytes_count_as_life(clock: Clock) -> None:
    a = Engine("alice", keepalive_interval=10, keepalive_wait=2)
    link = pair(clock, a)
    for _ in range(5):
        clock.advance(9)
        link.b.engine.send_message("alice", Message(b"x", ttl=None), clock.now)
        link.pump()
        assert a.handle_timeout(clock.now) == []
    assert a.data_to_send(link.a.conn_id) == b""


def test_keepalive_closes_a_silent_peer(clock: Clock) -> None:
    a = Engine("alice", keepalive_interval=10, keepalive_wait=2)
    link = pair(clock, a)
    t0 = clock.now
    a.handle_timeout(t0 + 10)
    assert a.handle_timeout(t0 + 11.999) == []
    events = a.handle_timeout(t0 + 12)
    assert [type(e.error) for e in errors(events)] == [KeepaliveTimeoutError]
    assert events[-1] == CloseConnection(link.a.conn_id)
    assert a.handle_timeout(t0 + 100) == []  # reported once


def test_keepalive_closes_many_silent_peers_in_one_call(clock: Clock) -> None:
    a = Engine("alice", keepalive_interval=10, keepalive_wait=2)
    links = [pair(clock, a, Engine(f"peer{i}")) for i in range(5)]
    t0 = clock.now
    a.handle_timeout(t0 + 10)
    events = a.handle_timeout(t0 + 12)
    assert sorted(e.conn_id for e in of_type(events, CloseConnection)) == sorted(
        link.a.conn_id for link in links
    )
    for link in links:
        a.connection_lost(link.a.conn_id, t0 + 12)
    assert a.connected_idents() == {}


def test_keepalive_disabled_by_default(clock: Clock) -> None:
    a = Engine("alice")
    pair(clock, a)
    assert a.next_deadline() is None
    assert a.handle_timeout(clock.now + 10**6) == []


# ------------------------------------------------------------ handshake timeout


def test_handshake_timeout(clock: Clock) -> None:
    a = Engine("alice", handshake_timeout=5)
    a.connection_made("c", clock.now)
    assert a.next_deadline() == clock.now + 5
    assert a.handle_timeout(clock.now + 4.999) == []
    events = a.handle_timeout(clock.now + 5)
    assert [type(e.error) for e in errors(events)] == [HandshakeTimeoutError]
    assert events[-1] == CloseConnection("c")


def test_handshake_timeout_after_version_without_identification(clock: Clock) -> None:
    a = Engine("alice", handshake_timeout=5)
    a.connection_made("c", clock.now)
    a.receive_data("c", packets(ProtocolVersion()), clock.now)
    events = a.handle_timeout(clock.now + 5)
    assert [type(e.error) for e in errors(events)] == [HandshakeTimeoutError]


def test_identified_connection_has_no_handshake_deadline(clock: Clock) -> None:
    a = Engine("alice", handshake_timeout=5)
    pair(clock, a)
    assert a.handle_timeout(clock.now + 5) == []


# ---------------------------------------------------------------- identities


def test_duplicate_identifier_is_rejected(clock: Clock) -> None:
    a = Engine("alice")
    first = pair(clock, a, Engine("bob"))
    impostor = Link(a, Engine("bob"), clock).connect()
    impostor.pump()
    errs = errors(impostor.a.events)
    assert [type(e.error) for e in errs] == [DuplicateIdentError]
    assert "bob" in str(errs[0].error)
    assert impostor.a.lost and impostor.a.close_requested
    assert of_type(impostor.a.events, PeerConnected) == []
    # the first connection carries on
    assert a.connected_idents() == {"bob": first.a.conn_id}
    a.send_message("bob", Message(b"still here", ttl=None), clock.now)
    first.pump()
    assert [m.data for m in first.b.received] == [b"still here"]


def test_own_identifier_is_rejected(clock: Clock) -> None:
    link = Link(Engine("alice"), Engine("alice"), clock).connect()
    link.pump()
    assert [type(e.error) for e in errors(link.a.events)] == [DuplicateIdentError]


def test_identifier_is_free_again_after_disconnect(clock: Clock) -> None:
    a = Engine("alice")
    pair(clock, a).disconnect()
    link = pair(clock, a)
    assert of_type(link.a.events, PeerConnected)


def test_identity_binding_rejects_a_spoofed_identifier(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now, cert_idents=["bob"])
    mallory = packets(ProtocolVersion(), Capabilities(CAP_ACK, 10), Identification("mallory"))
    events = a.receive_data("c", mallory, clock.now)
    errs = errors(events)
    assert [type(e.error) for e in errs] == [IdentityMismatchError]
    assert "mallory" in str(errs[0].error) and "bob" in str(errs[0].error)
    assert a.connected_idents() == {}


def test_identity_binding_accepts_a_matching_identifier(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now, cert_idents={"bob", "bob.example.org"})
    events = a.receive_data("c", LEGACY_HELLO, clock.now)
    assert events == [PeerConnected("c", "bob", True)]


def test_identity_binding_with_no_names_rejects_everyone(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now, cert_idents=[])
    assert [type(e.error) for e in errors(a.receive_data("c", LEGACY_HELLO, clock.now))] == [
        IdentityMismatchError
    ]


# -------------------------------------------------------------------- storage


def test_persistent_engine_stores_only_persistent_messages(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    p = Message(b"p", ttl=None, flags=FLAG_PERSISTENT)
    t = Message(b"t", ttl=None)
    a.send_message("bob", p, clock.now)
    a.send_message("bob", t, clock.now)
    batch = a.take_storage_batch()
    assert batch is not None
    assert batch.push == [("bob", p)]
    assert a.take_storage_batch() is None


def test_non_persistent_engine_never_makes_batches(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob")
    a.send_message("bob", Message(b"p", ttl=None, flags=FLAG_PERSISTENT), clock.now)
    pair(clock, a, b)
    assert a.take_storage_batch() is None
    assert b.take_storage_batch() is None


def test_ack_deletes_and_handed_records_seen(clock: Clock) -> None:
    a, b = Engine("alice", persistent=True), Engine("bob", persistent=True)
    p = Message(b"p", ttl=None, flags=FLAG_PERSISTENT)
    a.send_message("bob", p, clock.now)
    assert a.take_storage_batch() is not None
    pair(clock, a, b)
    batch = a.take_storage_batch()
    assert batch is not None and batch.delete == [p.uuid] and batch.push == []
    seen = b.take_storage_batch()
    assert seen is not None and seen.seen == [("alice", p.uuid)]
    assert seen.seen_keep >= DEFAULT_WINDOW


def test_legacy_write_deletes_from_storage(clock: Clock) -> None:
    e = legacy_conn(clock, Engine("alice", persistent=True))
    m = Message(b"x", ttl=None, flags=FLAG_PERSISTENT)
    e.send_message("bob", m, clock.now)
    data = e.data_to_send("c")
    batch = e.take_storage_batch()
    assert batch is not None and batch.push == [("bob", m)] and batch.delete == []
    e.data_sent("c", len(data))
    batch = e.take_storage_batch()
    assert batch is not None and batch.delete == [m.uuid]


def test_reconnect_updates_the_stored_remaining_ttl(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    m = Message(b"x", ttl=10, flags=FLAG_PERSISTENT)
    a.send_message("bob", m, clock.now)
    a.take_storage_batch()
    clock.advance(4)
    pair(clock, a, Engine("bob", window=1), auto_hand=False)
    batch = a.take_storage_batch()
    assert batch is not None and batch.update_ttl == [(m.uuid, 6.0)]


def test_load_restores_queues_and_delivery_resumes(clock: Clock) -> None:
    storage = MemoryQueuesStorage()
    a = Engine("alice", persistent=True)
    sent = [Message(bytes([i]), ttl=60, flags=FLAG_PERSISTENT) for i in range(5)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    batch = a.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    del a  # the process dies

    clock.advance(1000)  # time the process was not running does not age
    a2 = Engine("alice", persistent=True)
    state = storage.load()
    assert a2.load(state.queues, state.seen, clock.now) == []
    assert [m.uuid for m in a2.queued("bob")] == [m.uuid for m in sent]
    assert a2.next_deadline() == clock.now + 60
    link = pair(clock, a2)
    assert [m.uuid for m in link.b.received] == [m.uuid for m in sent]
    batch = a2.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    assert storage.load().queues == {}


def test_load_drops_ttl_0_leftovers(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    m = Message(b"x", ttl=0)
    assert a.load({"bob": [m]}, {}, clock.now) == [MessageDropped("bob", m.uuid)]
    batch = a.take_storage_batch()
    assert batch is not None and batch.delete == [m.uuid]


def test_loaded_seen_window_drops_duplicates_after_a_restart(clock: Clock) -> None:
    storage = MemoryQueuesStorage()
    a, b = Engine("alice"), Engine("bob", persistent=True)
    link = pair(clock, a, b)
    m = Message(b"x", ttl=None)
    a.send_message("bob", m, clock.now)
    link.transfer(link.a)
    assert len(link.b.received) == 1
    batch = b.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    link.disconnect()  # bob's ack was lost; bob restarts

    b2 = Engine("bob", persistent=True)
    state = storage.load()
    b2.load(state.queues, state.seen, clock.now)
    link2 = pair(clock, a, b2)
    assert link2.b.received == []
    assert of_type(link2.a.events, MessageDelivered) == [MessageDelivered("bob", m.uuid)]


def test_purge_removes_waiting_messages(clock: Clock) -> None:
    a = Engine("alice", persistent=True)
    ms = [Message(bytes([i]), ttl=None, flags=FLAG_PERSISTENT) for i in range(3)]
    for m in ms:
        a.send_message("bob", m, clock.now)
    a.take_storage_batch()
    assert a.purge("bob") == [m.uuid for m in ms]
    assert a.queued("bob") == []
    batch = a.take_storage_batch()
    assert batch is not None and batch.delete == [m.uuid for m in ms]


# --------------------------------------------------------- out of order input


def fresh(clock: Clock) -> Engine:
    e = Engine("alice")
    e.connection_made("c", clock.now)
    e.data_to_send("c")
    return e


MSG = MessageFrame(UUID, None, 0, b"x").encode()


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (packets(MSG), UnexpectedFrameError),
        (packets(ProtocolVersion(), MSG), UnexpectedFrameError),
        (packets(Identification("bob")), UnexpectedFrameError),
        (packets(Capabilities(CAP_ACK, 1)), UnexpectedFrameError),
        (packets(Ping()), UnexpectedFrameError),
        (packets(ProtocolVersion(), ProtocolVersion()), UnexpectedFrameError),
        (
            packets(ProtocolVersion(), Capabilities(1, 1), Capabilities(1, 1)),
            UnexpectedFrameError,
        ),
        (packets(ProtocolVersion(), Ack(1, UUID)), UnexpectedFrameError),
        (LEGACY_HELLO + packets(Identification("bob")), UnexpectedFrameError),
        (LEGACY_HELLO + packets(Capabilities(1, 1)), UnexpectedFrameError),
        (LEGACY_HELLO + packets(ProtocolVersion()), UnexpectedFrameError),
        (LEGACY_HELLO + packets(Ack(1, UUID)), UnexpectedFrameError),
        (packets(ProtocolVersion(2)), IncompatibleProtocolError),
        (packets(IncompatibleProtocol()), IncompatibleProtocolError),
        (LEGACY_HELLO + packets(IncompatibleProtocol()), IncompatibleProtocolError),
        (b"\x00\x00\x00\x00", MalformedFrameError),
        (LEGACY_HELLO + b"\x00\x00\x00\x00", MalformedFrameError),
        (LEGACY_HELLO + packets(b"\x03" + UUID), MalformedFrameError),
        (LEGACY_HELLO + packets(b"\x04\x00"), MalformedFrameError),
        (packets(ProtocolVersion(), b"\x02\xff"), MalformedFrameError),
        (packets(ProtocolVersion(), b"\x02" + b"x" * 51), MalformedFrameError),
        (b"GET / HTTP/1.1\r\n\r\n", PacketTooLargeError),
        (LEGACY_HELLO + struct.pack("!I", 2**31), PacketTooLargeError),
    ],
)
def test_bad_input_closes_the_connection_with_a_typed_error(
    clock: Clock, stream: bytes, error: type[Exception]
) -> None:
    for chunking in (None, 1):
        e = fresh(clock)
        events = []
        if chunking is None:
            events += e.receive_data("c", stream, clock.now)
        else:
            for i in range(len(stream)):
                events += e.receive_data("c", stream[i : i + 1], clock.now)
        errs = errors(events)
        assert [type(x.error) for x in errs] == [error], chunking
        assert events[-1] == CloseConnection("c")
        assert e.receive_data("c", LEGACY_HELLO, clock.now) == []
        e.connection_lost("c", clock.now)


def test_incompatible_version_is_answered_before_closing(clock: Clock) -> None:
    e = fresh(clock)
    e.receive_data("c", packets(ProtocolVersion(7)), clock.now)
    assert frames_of(e.data_to_send("c")) == [IncompatibleProtocol()]


def test_bytes_after_an_error_are_ignored(clock: Clock) -> None:
    e = legacy_conn(clock)
    good = packets(MessageFrame(UUID, None, 0, b"before").encode())
    after = packets(MessageFrame(bytes(16), None, 0, b"after").encode())
    events = e.receive_data("c", good + b"\x00\x00\x00\x00" + after, clock.now)
    assert [type(x) for x in events] == [MessageReceived, ErrorOccurred, CloseConnection]
    assert events[0].message.data == b"before"  # type: ignore[union-attr]
    assert e.receive_data("c", after, clock.now) == []
    assert e.data_to_send("c") == b""


def test_message_before_an_oversized_header_in_the_same_read_is_delivered(clock: Clock) -> None:
    e = legacy_conn(clock, Engine("alice", max_packet_size=1024))
    good = packets(MessageFrame(UUID, None, 0, b"before").encode())
    events = e.receive_data("c", good + struct.pack("!I", 4096) + b"x" * 100, clock.now)
    assert [type(x) for x in events] == [MessageReceived, ErrorOccurred, CloseConnection]
    assert isinstance(events[1], ErrorOccurred)
    assert isinstance(events[1].error, PacketTooLargeError)


def test_error_on_one_connection_leaves_the_others_alone(clock: Clock) -> None:
    a = Engine("alice")
    good = pair(clock, a, Engine("bob"))
    bad = pair(clock, a, Engine("carol"))
    events = a.receive_data(bad.a.conn_id, b"\x00\x00\x00\x00", clock.now)
    assert of_type(events, CloseConnection) == [CloseConnection(bad.a.conn_id)]
    a.connection_lost(bad.a.conn_id, clock.now)
    a.send_message("bob", Message(b"ok", ttl=None), clock.now)
    good.pump()
    assert [m.data for m in good.b.received] == [b"ok"]


def test_peer_disconnected_reported_for_identified_connections_only(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now)
    assert a.connection_lost("c", clock.now) == []
    assert a.connection_lost("c", clock.now) == []  # twice is harmless
    link = pair(clock, a)
    link.disconnect()
    assert of_type(link.a.events, PeerDisconnected) == [PeerDisconnected(link.a.conn_id, "bob")]


# ------------------------------------------------------------- programming errors


def test_send_message_validates_its_arguments(clock: Clock) -> None:
    a = Engine("alice")
    with pytest.raises(TypeError, match="message"):
        a.send_message("bob", b"raw", clock.now)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ident"):
        a.send_message("x" * 51, Message(b""), clock.now)
    with pytest.raises(TypeError, match="ident"):
        a.send_message(b"bob", Message(b""), clock.now)  # type: ignore[arg-type]


def test_engine_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="ident"):
        Engine("")
    with pytest.raises(ValueError, match="window"):
        Engine("a", window=0)
    with pytest.raises(ValueError, match="window"):
        Engine("a", window=2**32)
    with pytest.raises(TypeError, match="window"):
        Engine("a", window=1.5)  # type: ignore[arg-type]
    for name in ("keepalive_interval", "keepalive_wait", "handshake_timeout"):
        for bad, error in (
            (0, ValueError),
            (-1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            ("1", TypeError),
        ):
            with pytest.raises(error, match=name):
                Engine("a", **{name: bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_packet_size"):
        Engine("a", max_packet_size=10)


def test_connection_id_twice_is_a_local_error(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now)
    with pytest.raises(LocalProtocolError, match="already"):
        a.connection_made("c", clock.now)


def test_data_sent_beyond_what_was_returned_is_a_local_error(clock: Clock) -> None:
    a = Engine("alice")
    a.connection_made("c", clock.now)
    n = len(a.data_to_send("c"))
    with pytest.raises(LocalProtocolError, match="data_sent"):
        a.data_sent("c", n + 1)


def test_mass_expiry_keeps_the_survivors_in_order(clock: Clock) -> None:
    a = Engine("alice")
    sent = [Message(bytes([i % 256]), ttl=None if i % 3 else 1) for i in range(3000)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    events = a.handle_timeout(clock.now + 1)
    assert [e.uuid for e in of_type(events, MessageDropped)] == [
        m.uuid for i, m in enumerate(sent) if i % 3 == 0
    ]
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for i, m in enumerate(sent) if i % 3]


def test_ttl_0_messages_dropped_on_disconnect_keep_the_others_in_order(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    link = pair(clock, a, b, auto_hand=False)
    sent = [Message(bytes([i]), ttl=0 if i % 2 else None) for i in range(100)]
    for m in sent:
        a.send_message("bob", m, clock.now)
    link.pump()
    link.disconnect()
    dropped = [e.uuid for e in of_type(link.a.events, MessageDropped)]
    assert dropped == [m.uuid for m in sent if m.ttl == 0]
    assert [m.uuid for m in a.queued("bob")] == [m.uuid for m in sent if m.ttl is None]


def test_handshake_and_messages_in_one_read(clock: Clock) -> None:
    e = fresh(clock)
    frames = [MessageFrame(bytes([i]) * 16, i, 0, b"m%d" % i).encode() for i in range(3)]
    events = e.receive_data("c", LEGACY_HELLO + packets(*frames), clock.now)
    assert events[0] == PeerConnected("c", "bob", True)
    assert [x.message.data for x in of_type(events, MessageReceived)] == [b"m0", b"m1", b"m2"]


def test_capabilities_without_the_ack_bit_mean_legacy(clock: Clock) -> None:
    e = fresh(clock)
    hello = packets(ProtocolVersion(), Capabilities(0x80, 0), Identification("bob"))
    assert e.receive_data("c", hello, clock.now) == [PeerConnected("c", "bob", True)]


def test_unknown_capability_bits_are_ignored(clock: Clock) -> None:
    e = fresh(clock)
    caps = Capabilities(0xFFFFFFFF, 2).encode() + b"future fields"
    hello = packets(ProtocolVersion(), caps, Identification("bob"))
    assert e.receive_data("c", hello, clock.now) == [PeerConnected("c", "bob", False)]
    for i in range(5):
        e.send_message("bob", Message(bytes([i]), ttl=None), clock.now)
    sent = [f for f in frames_of(e.data_to_send("c")) if isinstance(f, MessageFrame)]
    assert len(sent) == 2  # the window it announced


def test_application_close(clock: Clock) -> None:
    link = pair(clock)
    a = link.a.engine
    assert a.close(link.a.conn_id) == [CloseConnection(link.a.conn_id)]
    assert a.close(link.a.conn_id) == []
    err = DuplicateIdentError("test")
    link2 = pair(clock, a, Engine("carol"))
    events = a.close(link2.a.conn_id, err)
    assert events == [
        ErrorOccurred(link2.a.conn_id, "carol", err),
        CloseConnection(link2.a.conn_id),
    ]


def _digest(events: list[Event]) -> list[object]:
    out: list[object] = []
    for e in events:
        if isinstance(e, ErrorOccurred):
            out.append((type(e.error), str(e.error)))
        else:
            out.append(e)
    return out


_remote_frames = st.one_of(
    st.builds(
        lambda u, t, d: MessageFrame(u, t, 0, d).encode(),
        st.binary(min_size=16, max_size=16),
        st.none() | st.integers(0, 100),
        st.binary(max_size=40),
    ),
    st.just(Ping().encode()),
    st.just(Pong().encode()),
    st.just(b"\x77unknown"),
    st.just(b""),  # zero-length packet: an error
    st.just(b"\x02again"),  # a second IDENTIFICATION: an error
)


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(
    st.lists(_remote_frames, max_size=12),
    st.booleans(),
    st.lists(st.integers(0, 2000), max_size=10),
    st.booleans(),
)
def test_what_happens_does_not_depend_on_chunking(
    frames: list[bytes], capable: bool, cuts: list[int], oversized_tail: bool
) -> None:
    if capable:
        hello = packets(ProtocolVersion(), Capabilities(CAP_ACK, 100), Identification("bob"))
    else:
        hello = LEGACY_HELLO
    stream = hello + packets(*frames)
    if oversized_tail:
        stream += struct.pack("!I", 10_000) + b"x" * 50
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)], strict=True)]

    results = []
    for pieces in ([stream], chunks):
        e = Engine("alice", max_packet_size=1000)
        e.connection_made("c", 0.0)
        e.data_to_send("c")
        events: list[Event] = []
        for piece in pieces:
            new = e.receive_data("c", piece, 0.0)
            events += new
            # a synchronous I/O layer hands what it received at once
            e.handed("c", len(of_type(new, MessageReceived)))
        # (acks may differ: none goes out once the connection is closing)
        results.append(_digest(events))
    assert results[0] == results[1]


def test_one_persistent_message_to_two_peers_stays_stored_for_the_second(
    clock: Clock,
) -> None:
    # 1.6 programs send one Message object to several peers; the uuid is shared
    storage = MemoryQueuesStorage()
    a = Engine("alice", persistent=True)
    m = Message(b"to everyone", ttl=None, flags=FLAG_PERSISTENT)
    a.send_message("bob", m, clock.now)
    a.send_message("carol", m, clock.now)
    clock.advance(5)
    link = pair(clock, a, Engine("bob"))  # bob gets it and acknowledges
    assert link.b.received == [m]
    batch = a.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    # alice crashes; carol was never connected
    a2 = Engine("alice", persistent=True)
    state = storage.load()
    assert dict(state.queues) == {"carol": [m]}
    a2.load(state.queues, state.seen, clock.now)
    link2 = pair(clock, a2, Engine("carol"))
    assert link2.b.received == [m]
    batch = a2.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    assert storage.load().queues == {}


def test_shared_uuid_ttl_updates_are_per_queue(clock: Clock) -> None:
    storage = MemoryQueuesStorage()
    a = Engine("alice", persistent=True)
    m = Message(b"x", ttl=100, flags=FLAG_PERSISTENT)
    a.send_message("bob", m, clock.now)
    a.send_message("carol", m, clock.now)
    clock.advance(30)
    pair(clock, a, Engine("bob", window=1), auto_hand=False)  # bob: 70 s remain
    clock.advance(10)
    pair(clock, a, Engine("carol", window=1), auto_hand=False)  # carol: 60 s remain
    for b in (a.take_storage_batch(),):
        assert b is not None
        storage.apply(b)
    queues = storage.load().queues
    assert [x.ttl for x in queues["bob"]] == [70]
    assert [x.ttl for x in queues["carol"]] == [60]


def test_a_capable_peer_that_ignores_the_window_is_cut_off(clock: Clock) -> None:
    e = Engine("alice", window=3)
    e.connection_made("c", clock.now)
    e.data_to_send("c")
    hello = packets(ProtocolVersion(), Capabilities(CAP_ACK, 10), Identification("bob"))
    e.receive_data("c", hello, clock.now)
    flood = [MessageFrame(bytes([i]) * 16, None, 0, b"x").encode() for i in range(4)]
    events = e.receive_data("c", packets(*flood[:3]), clock.now)
    assert len(of_type(events, MessageReceived)) == 3
    events = e.receive_data("c", packets(flood[3]), clock.now)
    assert [type(x.error) for x in errors(events)] == [UnexpectedFrameError]
    assert "window" in str(errors(events)[0].error)


def test_a_legacy_peer_has_no_window(clock: Clock) -> None:
    e = legacy_conn(clock, Engine("alice", window=3))
    flood = [MessageFrame(bytes([i]) * 16, None, 0, b"x").encode() for i in range(10)]
    events = e.receive_data("c", packets(*flood), clock.now)
    assert len(of_type(events, MessageReceived)) == 10


def test_a_flapping_peer_does_not_grow_the_timer_heap(clock: Clock) -> None:
    a = Engine("alice")
    for i in range(1000):
        a.send_message("bob", Message(bytes([i % 256]), ttl=86400), clock.now)
    b = Engine("bob", window=1)
    for _ in range(50):
        link = pair(clock, a, b, auto_hand=False)
        link.disconnect()
        clock.advance(1)
    assert len(a._expiry) < 3000  # not 50 x 1000
    assert len(a.queued("bob")) == 1000
    assert a.next_deadline() is not None
    assert len(a.handle_timeout(clock.now + 86400)) == 1000


def test_cert_idents_must_not_be_a_single_string(clock: Clock) -> None:
    with pytest.raises(TypeError, match="cert_idents"):
        Engine("alice").connection_made("c", clock.now, cert_idents="bob")


_hostile_payloads = st.one_of(
    _remote_frames,
    st.binary(max_size=40),
    st.builds(
        lambda t, b: bytes([t]) + b,
        st.sampled_from([0, 1, 2, 3, 4, 5, 0x40, 0x41]),
        st.binary(max_size=30),
    ),
    st.builds(
        lambda c, u: Ack(c, u).encode(),
        st.integers(1, 5),
        st.binary(min_size=16, max_size=16),
    ),
)

_CAPABLE_HELLO = packets(ProtocolVersion(), Capabilities(CAP_ACK, 2), Identification("bob"))


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(
    st.sampled_from([b"", LEGACY_HELLO, _CAPABLE_HELLO]),
    st.lists(_hostile_payloads, max_size=15),
    st.binary(max_size=12),
    st.lists(st.integers(0, 3000), max_size=8),
)
def test_nothing_a_peer_sends_raises_out_of_the_engine(
    hello: bytes, payloads: list[bytes], garbage: bytes, cuts: list[int]
) -> None:
    stream = hello + packets(*payloads) + garbage
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)], strict=True)]
    e = Engine("alice", max_packet_size=100, window=4)
    e.send_message("bob", Message(b"waiting", ttl=None), 0.0)
    e.connection_made("c", 0.0)
    events: list[Event] = []
    for chunk in chunks:
        out = e.data_to_send("c")
        e.data_sent("c", len(out) // 2)  # the socket is slow
        new = e.receive_data("c", chunk, 0.0)
        events += new
        e.handed("c", len(of_type(new, MessageReceived)))
    closes = of_type(events, CloseConnection)
    errs = errors(events)
    assert len(closes) == len(errs) <= 1
    if closes:
        assert events[-1] == closes[0]
        assert isinstance(errs[0].error, RemoteProtocolError)
    e.connection_lost("c", 1.0)
    # whatever the peer did, the message waiting for it is still queued
    assert [m.data for m in e.queued("bob")] == [b"waiting"]


def test_purged_messages_do_not_expire_later(clock: Clock) -> None:
    a = Engine("alice")
    m = Message(b"x", ttl=5)
    a.send_message("bob", m, clock.now)
    assert a.purge("bob") == [m.uuid]
    assert a.purge("nobody") == []
    assert a.next_deadline() is None
    assert a.handle_timeout(clock.now + 10) == []


def test_reconnect_cancels_the_ttl_timer(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    a.send_message("bob", Message(b"1", ttl=None), clock.now)
    m = Message(b"2", ttl=5)
    a.send_message("bob", m, clock.now)
    assert a.next_deadline() == clock.now + 5
    pair(clock, a, b, auto_hand=False)
    assert a.next_deadline() is None  # connected: nothing ages
    assert a.handle_timeout(clock.now + 100) == []
    assert [x.uuid for x in a.queued("bob")][1] == m.uuid


def test_duplicate_behind_an_unhanded_message_is_acked_in_order(clock: Clock) -> None:
    e = Engine("alice")
    e.connection_made("c", clock.now)
    e.data_to_send("c")
    hello = packets(ProtocolVersion(), Capabilities(CAP_ACK, 10), Identification("bob"))
    e.receive_data("c", hello, clock.now)
    old = MessageFrame(bytes([1]) * 16, None, 0, b"old").encode()
    new = MessageFrame(bytes([2]) * 16, None, 0, b"new").encode()
    e.receive_data("c", packets(old), clock.now)
    e.handed("c", 1)
    assert frames_of(e.data_to_send("c")) == [Ack(1, bytes([1]) * 16)]
    events = e.receive_data("c", packets(new, old), clock.now)  # old again, behind new
    assert [x.message.data for x in of_type(events, MessageReceived)] == [b"new"]
    assert e.data_to_send("c") == b""  # the duplicate waits for "new" to be handed
    e.handed("c", 1)
    assert frames_of(e.data_to_send("c")) == [Ack(2, bytes([1]) * 16)]


def test_wants_write(clock: Clock) -> None:
    a, b = Engine("alice"), Engine("bob", window=1)
    assert not a.wants_write("nope")
    assert a.data_to_send("nope") == b""
    a.connection_made("c", clock.now)
    assert a.wants_write("c")  # the hello
    a.data_to_send("c")
    assert not a.wants_write("c")  # not identified: no messages yet
    link = pair(clock, a, b, auto_hand=False)
    assert not a.wants_write(link.a.conn_id)
    a.send_message("bob", Message(b"1", ttl=None), clock.now)
    a.send_message("bob", Message(b"2", ttl=None), clock.now)
    assert a.wants_write(link.a.conn_id)
    link.pump()
    assert not a.wants_write(link.a.conn_id)  # the window is full


def test_max_packet_size_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="max_packet_size"):
        Engine("a", max_packet_size=1e6)  # type: ignore[arg-type]


def test_errors_on_a_closing_connection_are_reported_once(clock: Clock) -> None:
    e = fresh(clock)
    events = e.receive_data("c", b"\x00\x00\x00\x00", clock.now)
    assert len(errors(events)) == 1
    assert e.close("c", DuplicateIdentError("again")) == []
    assert e.handle_timeout(clock.now + 10**6) == []  # no handshake timeout either
    assert e.next_deadline() is None


@pytest.mark.parametrize(("t0", "ttl"), [(1000.3, 0.1), (0.1, 0.2), (1e9 + 0.7, 0.3)])
def test_reconnect_and_timer_agree_at_an_inexact_boundary(t0: float, ttl: float) -> None:
    clock = Clock(t0)
    a = Engine("alice")
    m = Message(b"x", ttl=ttl)
    a.send_message("bob", m, t0)
    deadline = a.next_deadline()
    assert deadline is not None
    clock.now = deadline  # no timer run: the handshake finds it due
    link = pair(clock, a)
    assert link.b.received == []
    assert of_type(link.a.events, MessageDropped) == [MessageDropped("bob", m.uuid)]


# ----------------------------------------------------------- write stall


def test_a_write_that_does_not_finish_in_time_closes_the_connection(clock: Clock) -> None:
    a = Engine("alice", write_stall_timeout=5)
    link = pair(clock, a)
    conn = link.a.conn_id
    t0 = clock.now
    a.send_message("bob", Message(b"x" * 1000, ttl=None), t0)
    data = a.data_to_send(conn)
    assert a.writing(conn, t0)  # no deadline before: the timer must wake
    assert a.next_deadline() == t0 + 5
    a.data_sent(conn, len(data) - 1)  # progress, but the write is not done
    assert a.handle_timeout(t0 + 4.999) == []
    events = a.handle_timeout(t0 + 5)
    (error,) = [e.error for e in errors(events)]
    assert isinstance(error, SlowReaderError) and "1 bytes" in str(error)
    assert events[-1] == CloseConnection(conn)
    assert a.handle_timeout(t0 + 100) == []  # reported once


def test_writes_that_finish_are_not_stalls(clock: Clock) -> None:
    a = Engine("alice", write_stall_timeout=5)
    link = pair(clock, a)
    conn = link.a.conn_id
    for _ in range(10):  # each write takes 4 s: slow, but every one finishes
        a.send_message("bob", Message(b"x", ttl=None), clock.now)
        data = a.data_to_send(conn)
        a.writing(conn, clock.now)
        assert a.next_deadline() == clock.now + 5
        assert not a.writing(conn, clock.now)  # the deadline did not move earlier
        clock.advance(4)
        assert a.handle_timeout(clock.now) == []
        a.data_sent(conn, len(data))
    assert a.next_deadline() is None
    clock.advance(100)
    assert a.handle_timeout(clock.now) == []


def test_the_write_stall_timeout_can_be_turned_off(clock: Clock) -> None:
    a = Engine("alice", write_stall_timeout=5)
    link = pair(clock, a)
    conn = link.a.conn_id
    a.send_message("bob", Message(b"x", ttl=None), clock.now)
    a.data_to_send(conn)
    a.writing(conn, clock.now)
    a.write_stall_timeout = None
    assert a.next_deadline() is None
    assert a.handle_timeout(clock.now + 100) == []
    with pytest.raises(ValueError, match="write_stall_timeout"):
        a.write_stall_timeout = 0
    assert Engine("carol").write_stall_timeout is None  # the sans-IO default


# ------------------------------------------------- unidentified connections


def test_beyond_max_unidentified_the_oldest_waiting_connection_is_closed(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    a = Engine("alice", max_unidentified=3)
    for i in range(3):
        a.connection_made(f"in{i}", clock.now, outbound=False)
    a.connection_made("ours", clock.now, outbound=True)  # dialled by us: not counted
    assert a.next_deadline() == clock.now + 30  # the handshake deadline only
    with caplog.at_level("INFO", logger="snakemq.engine"):
        for i in range(3, 6):
            a.connection_made(f"in{i}", clock.now, outbound=False)
        assert a.next_deadline() == clock.now  # the closes are due at once
        events = a.handle_timeout(clock.now)
        assert events == [CloseConnection(f"in{i}") for i in range(3)]
        later = a.next_deadline()
        assert later is not None and later > clock.now
        for i in range(3):
            a.connection_lost(f"in{i}", clock.now)
        # one that identifies frees its place: a newcomer finds room, the streak ends
        a.receive_data("in3", LEGACY_HELLO, clock.now)
        a.connection_made("in6", clock.now, outbound=False)
        assert a.handle_timeout(clock.now) == []
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "max_unidentified" in warnings[0].getMessage()
    assert any("3 were closed" in r.getMessage() for r in caplog.records)


def test_max_unidentified_is_checked() -> None:
    with pytest.raises(ValueError, match="max_unidentified"):
        Engine("alice", max_unidentified=0)
