"""Producer flow control: queue_full() / queue_has_room()."""

from __future__ import annotations

import pytest
from snakemq_proto import Engine, Message


def _connected_pair(max_queued: int | None) -> Engine:
    a, b = Engine("alice", max_queued=max_queued), Engine("bob")
    a.connection_made("a", 0.0)
    b.connection_made("b", 0.0)
    for _ in range(3):
        x, y = a.data_to_send("a"), b.data_to_send("b")
        a.data_sent("a", len(x))
        b.data_sent("b", len(y))
        b.receive_data("b", x, 0.0)
        a.receive_data("a", y, 0.0)
    assert a.connected_idents() == {"bob": "a"}
    return a


def test_full_at_the_limit_with_room_again_at_half() -> None:
    a = _connected_pair(max_queued=10)
    for i in range(10):
        assert not a.queue_full("bob")
        a.send_message("bob", Message(b"%d" % i, ttl=None), 0.0)
    assert a.queue_full("bob")
    assert not a.queue_has_room("bob")
    a.purge("bob")  # stands in for deliveries: the queue drains
    assert a.queue_has_room("bob")


def test_a_peer_that_is_away_never_fills() -> None:
    a = Engine("alice", max_queued=2)
    for _ in range(5):
        a.send_message("bob", Message(b"x", ttl=None), 0.0)
    assert not a.queue_full("bob")
    assert a.queue_has_room("bob")


def test_no_limit() -> None:
    a = _connected_pair(max_queued=None)
    for _ in range(100):
        a.send_message("bob", Message(b"x", ttl=None), 0.0)
    assert not a.queue_full("bob") and a.queue_has_room("bob")


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_queued"):
        Engine("alice", max_queued=bad)  # type: ignore[arg-type]
