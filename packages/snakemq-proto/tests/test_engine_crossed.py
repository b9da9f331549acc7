"""Two peers that dial each other (the tutorial's Bob and Jack) end up with
the same single connection on both sides, whatever order things happen in."""

from __future__ import annotations

import itertools

import pytest
from snakemq_proto import (
    CAP_ACK,
    Capabilities,
    CloseConnection,
    DuplicateIdentError,
    Engine,
    ErrorOccurred,
    Event,
    Frame,
    Identification,
    Message,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    ProtocolVersion,
    RedialHeld,
    encode_packet,
)

MESSAGE_MARK = b"for aaa only"


class Pair:
    """Engines ``a`` and ``b`` and the connections between them: conn name ->
    (conn id on a, conn id on b).  Each direction of a connection is a pipe:
    what a side wrote stays there until the other side reads it, also after
    the writer closed (as in TCP)."""

    def __init__(self) -> None:
        self.a, self.b = Engine("bob"), Engine("jack")
        self.conns: dict[str, tuple[str, str]] = {}
        self.pipes: dict[tuple[str, bool], bytes] = {}  # (name, a_to_b) -> unread bytes
        self.closed: set[str] = set()
        self.events: dict[str, list[Event]] = {"a": [], "b": []}

    def dial(self, name: str, a_dials: bool) -> None:
        """Connect; both sides write their handshake at once, as I/O layers do."""
        self.conns[name] = (f"a-{name}", f"b-{name}")
        self.a.connection_made(f"a-{name}", 0.0, outbound=a_dials)
        self.b.connection_made(f"b-{name}", 0.0, outbound=not a_dials)
        self.write(name, True)
        self.write(name, False)

    def write(self, name: str, a_to_b: bool) -> None:
        ca, cb = self.conns[name]
        src, sc = (self.a, ca) if a_to_b else (self.b, cb)
        data = src.data_to_send(sc)
        src.data_sent(sc, len(data))
        if name not in self.closed:
            self.pipes[(name, a_to_b)] = self.pipes.get((name, a_to_b), b"") + data

    def read(self, name: str, a_to_b: bool) -> None:
        """The receiving side reads what is in the pipe and acts on it."""
        ca, cb = self.conns[name]
        data = self.pipes.pop((name, a_to_b), b"")
        if not data:
            return
        dst, dc, side = (self.b, cb, "b") if a_to_b else (self.a, ca, "a")
        events = dst.receive_data(dc, data, 0.0)
        self.events[side] += events
        received = [e for e in events if isinstance(e, MessageReceived)]
        if received:
            dst.handed(dc, len(received))
        for e in events:
            if isinstance(e, CloseConnection):
                self.close(next(n for n, ids in self.conns.items() if e.conn_id in ids), not a_to_b)

    def flow(self, name: str, a_to_b: bool) -> None:
        """Move what one side of ``name`` has to send to the other side."""
        if name in self.closed:
            return
        self.write(name, a_to_b)
        self.read(name, a_to_b)

    def close(self, name: str, by_a: bool) -> None:
        """What an I/O layer does on ``CloseConnection``: write what the
        closing side still has, close; the other side reads what is left in
        its pipe, then sees the end of the stream."""
        if name in self.closed:
            return
        self.write(name, by_a)
        self.closed.add(name)
        self.pipes.pop((name, not by_a), None)  # the closer reads no more
        self.read(name, by_a)
        ca, cb = self.conns[name]
        self.events["a"] += self.a.connection_lost(ca, 0.0)
        self.events["b"] += self.b.connection_lost(cb, 0.0)

    def pump(self) -> None:
        for _ in range(10):
            for name in self.conns:
                if name not in self.closed:
                    self.flow(name, True)
                    self.flow(name, False)


ORDERS = list(itertools.permutations([("x", True), ("x", False), ("y", True), ("y", False)]))


@pytest.mark.parametrize("order", ORDERS)
def test_crossed_dials_keep_the_connection_dialled_by_the_smaller_ident(
    order: tuple[tuple[str, bool], ...],
) -> None:
    pair = Pair()
    pair.dial("x", a_dials=True)  # bob dials jack: bob < jack, so this one stays
    pair.dial("y", a_dials=False)  # jack dials bob
    pair.a.send_message("jack", Message(b"to jack", ttl=None), 0.0)
    pair.b.send_message("bob", Message(b"to bob", ttl=None), 0.0)
    for name, a_to_b in order:  # every interleaving of the handshakes
        for _ in range(3):
            pair.flow(name, a_to_b)
    pair.pump()
    assert pair.closed == {"y"}
    assert pair.a.connected_idents() == {"jack": "a-x"}
    assert pair.b.connected_idents() == {"bob": "b-x"}
    got_a = [e.message.data for e in pair.events["a"] if isinstance(e, MessageReceived)]
    got_b = [e.message.data for e in pair.events["b"] if isinstance(e, MessageReceived)]
    assert got_a == [b"to bob"] and got_b == [b"to jack"]
    # dropping the crossed one is not an error
    for side in ("a", "b"):
        errors = [e for e in pair.events[side] if isinstance(e, ErrorOccurred)]
        assert all(isinstance(e.error, DuplicateIdentError) for e in errors)
        connected = [e for e in pair.events[side] if isinstance(e, PeerConnected)]
        assert connected[-1].conn_id.endswith("-x")
    # jack dialled the connection that lost: its connector waits while x lives
    hold = RedialHeld("b-y", "bob")
    if hold not in pair.events["b"]:
        # jack's y was identified before bob refused it: to jack the peer just
        # closed it, so its connector dials once more, and that dial is held
        assert any(isinstance(e, PeerConnected) and e.conn_id == "b-y" for e in pair.events["b"])
        pair.dial("y2", a_dials=False)
        pair.pump()
        hold = RedialHeld("b-y2", "bob")
        assert pair.b.connected_idents() == {"bob": "b-x"}
    assert [e for e in pair.events["b"] if isinstance(e, RedialHeld)] == [hold]
    assert not [e for e in pair.events["a"] if isinstance(e, RedialHeld)]  # bob accepted y
    held = pair.events["b"].index(hold)
    # after y's PeerDisconnected (if y got that far), so that event cannot release it
    assert not [
        e for e in pair.events["b"][held:] if isinstance(e, PeerDisconnected) and e.ident == "bob"
    ]


def test_same_direction_duplicate_is_still_refused() -> None:
    pair = Pair()
    pair.dial("x", a_dials=True)
    pair.dial("y", a_dials=True)  # a second process calling itself bob, say
    pair.pump()
    assert pair.closed == {"y"}
    assert pair.a.connected_idents() == {"jack": "a-x"}
    # bob dialled both: the second dial waits until the first connection ends
    assert [e for e in pair.events["a"] if isinstance(e, RedialHeld)] == [RedialHeld("a-y", "jack")]
    assert not [e for e in pair.events["b"] if isinstance(e, RedialHeld)]


def test_without_direction_the_second_is_refused() -> None:
    a, b = Engine("bob"), Engine("jack")
    for conn in ("1", "2"):
        a.connection_made(conn, 0.0)
        b.connection_made(conn, 0.0)
    events: list[Event] = []
    for conn in ("1", "2"):
        events += b.receive_data(conn, a.data_to_send(conn), 0.0)
    assert any(
        isinstance(e, ErrorOccurred) and isinstance(e.error, DuplicateIdentError) for e in events
    )
    assert not [e for e in events if isinstance(e, RedialHeld)]  # nobody said who dialled
    assert b.connected_idents() == {"bob": "1"}


def _stranger_hello(ident: str, capable: bool) -> bytes:
    frames: list[Frame] = [ProtocolVersion()]
    if capable:
        frames.append(Capabilities(CAP_ACK, 16))
    frames.append(Identification(ident))
    return b"".join(encode_packet(f.encode()) for f in frames)


@pytest.mark.parametrize("capable", [True, False], ids=["capable", "legacy"])
def test_a_stranger_cannot_take_over_a_connection_we_dialled(capable: bool) -> None:
    # srv dialled aaa ("aaa" < "srv": by the crossed-dial rule, a connection
    # aaa dialled would win). A stranger dials srv and says it is aaa.
    srv, aaa = Engine("srv"), Engine("aaa")
    srv.connection_made("real", 0.0, outbound=True)
    aaa.connection_made("real", 0.0, outbound=False)
    aaa.receive_data("real", srv.data_to_send("real"), 0.0)
    srv.receive_data("real", aaa.data_to_send("real"), 0.0)
    assert srv.connected_idents() == {"aaa": "real"}
    srv.connection_made("stranger", 0.0, outbound=False)
    events = srv.receive_data("stranger", _stranger_hello("aaa", capable), 0.0)
    assert not [e for e in events if isinstance(e, PeerConnected | PeerDisconnected)]
    if not capable:  # a 1.6 newcomer can never prove anything: refused at once
        (error,) = [e for e in events if isinstance(e, ErrorOccurred)]
        assert (
            isinstance(error.error, DuplicateIdentError) and CloseConnection("stranger") in events
        )
    srv.send_message("aaa", Message(b"for aaa only", ttl=None), 0.0)
    got = aaa.receive_data("real", srv.data_to_send("real"), 0.0)
    assert [e.message.data for e in got if isinstance(e, MessageReceived)] == [b"for aaa only"]
    assert MESSAGE_MARK not in srv.data_to_send("stranger")
    # the stranger's messages are not taken either
    srv.receive_data("stranger", encode_packet(b"\x03" + b"u" * 16 + b"\xff" * 4 + b"\0" * 4), 1.0)
    events = srv.handle_timeout(srv.handshake_timeout + 1.0)
    if capable:  # the real aaa never closed its end: the stranger is refused
        (error,) = [e for e in events if isinstance(e, ErrorOccurred)]
        assert isinstance(error.error, DuplicateIdentError)
        assert "did not prove" in str(error.error) and CloseConnection("stranger") in events
    assert srv.connected_idents() == {"aaa": "real"}
    srv.connection_lost("stranger", 40.0)
    assert srv.connected_idents() == {"aaa": "real"}


def test_a_newcomer_takes_over_once_the_connection_we_dialled_is_closed() -> None:
    srv = Engine("srv")
    srv.connection_made("ours", 0.0, outbound=True)
    srv.receive_data("ours", _stranger_hello("aaa", True), 0.0)
    srv.connection_made("theirs", 0.0, outbound=False)
    message = Message(b"sent while waiting", ttl=None, uuid=b"m" * 16)
    frame = encode_packet(b"\x03" + message.uuid + b"\xff" * 4 + b"\0" * 4 + message.data)
    assert srv.receive_data("theirs", _stranger_hello("aaa", True) + frame, 0.0) == []
    events = srv.connection_lost("ours", 1.0)  # the peer closed its end of our dial
    assert PeerConnected("theirs", "aaa", False) in events
    received = [e for e in events if isinstance(e, MessageReceived)]
    assert [e.message.data for e in received] == [b"sent while waiting"]
    assert srv.connected_idents() == {"aaa": "theirs"}
