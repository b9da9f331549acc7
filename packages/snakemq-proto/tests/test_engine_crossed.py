"""Two peers that dial each other (the tutorial's Bob and Jack) end up with
the same single connection on both sides, whatever order things happen in."""

from __future__ import annotations

import itertools

import pytest
from snakemq_proto import (
    CloseConnection,
    DuplicateIdentError,
    Engine,
    ErrorOccurred,
    Event,
    Message,
    MessageReceived,
    PeerConnected,
)


class Pair:
    """Engines ``a`` and ``b`` and the connections between them: conn name ->
    (conn id on a, conn id on b)."""

    def __init__(self) -> None:
        self.a, self.b = Engine("bob"), Engine("jack")
        self.conns: dict[str, tuple[str, str]] = {}
        self.closed: set[str] = set()
        self.events: dict[str, list[Event]] = {"a": [], "b": []}

    def dial(self, name: str, a_dials: bool) -> None:
        self.conns[name] = (f"a-{name}", f"b-{name}")
        self.a.connection_made(f"a-{name}", 0.0, outbound=a_dials)
        self.b.connection_made(f"b-{name}", 0.0, outbound=not a_dials)

    def flow(self, name: str, a_to_b: bool) -> None:
        """Move what one side of ``name`` has to send to the other side."""
        ca, cb = self.conns[name]
        src, dst = (self.a, self.b) if a_to_b else (self.b, self.a)
        sc, dc = (ca, cb) if a_to_b else (cb, ca)
        data = src.data_to_send(sc)
        src.data_sent(sc, len(data))
        if name in self.closed:
            return
        events = dst.receive_data(dc, data, 0.0)
        side = "b" if a_to_b else "a"
        self.events[side] += events
        engine = self.b if a_to_b else self.a
        received = [e for e in events if isinstance(e, MessageReceived)]
        if received:
            engine.handed(dc, len(received))
        for e in events:
            if isinstance(e, CloseConnection):
                self.close(next(n for n, ids in self.conns.items() if e.conn_id in ids))

    def close(self, name: str) -> None:
        if name in self.closed:
            return
        self.closed.add(name)
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


def test_same_direction_duplicate_is_still_refused() -> None:
    pair = Pair()
    pair.dial("x", a_dials=True)
    pair.dial("y", a_dials=True)  # a second process calling itself bob, say
    pair.pump()
    assert pair.closed == {"y"}
    assert pair.a.connected_idents() == {"jack": "a-x"}


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
    assert b.connected_idents() == {"bob": "1"}
