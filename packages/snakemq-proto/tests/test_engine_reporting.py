"""report_sent / report_delivered: events nobody listens to are not built,
and the queue rules do not change."""

from __future__ import annotations

import pytest
from snakemq_proto import Engine, Message, MessageDelivered, MessageReceived, MessageSent


def _connect(a: Engine, b: Engine) -> None:
    a.connection_made("a", 0.0)
    b.connection_made("b", 0.0)


def _exchange(a: Engine, b: Engine, sent: int) -> list[object]:
    """Pump bytes between a and b (connected); b must receive ``sent``
    messages.  Returns a's events."""
    events: list[object] = []
    received = 0
    for _ in range(5):
        x, y = a.data_to_send("a"), b.data_to_send("b")
        events += a.data_sent("a", len(x))
        b.data_sent("b", len(y))
        got = [e for e in b.receive_data("b", x, 0.0) if isinstance(e, MessageReceived)]
        received += len(got)
        b.handed("b", len(got))
        events += a.receive_data("a", y, 0.0)
    assert received == sent
    return events


@pytest.mark.parametrize("report", [True, False])
def test_reporting_switches(report: bool) -> None:
    a, b = Engine("alice"), Engine("bob")
    a.report_sent = a.report_delivered = report
    _connect(a, b)
    for i in range(3):
        a.send_message("bob", Message(b"%d" % i, ttl=None), 0.0)
    events = _exchange(a, b, 3)
    assert a.queued("bob") == []  # acknowledged and gone either way
    sent = [e for e in events if isinstance(e, MessageSent)]
    delivered = [e for e in events if isinstance(e, MessageDelivered)]
    assert (len(sent), len(delivered)) == ((3, 3) if report else (0, 0))


# --------------------------------------------- settlement: the one rule for both I/O packages


@pytest.mark.parametrize("legacy_side", ["receiver", "sender"])
def test_towards_a_legacy_peer_the_write_settles_the_message(legacy_side: str) -> None:
    a = Engine("alice", legacy=legacy_side == "sender")
    b = Engine("bob", legacy=legacy_side == "receiver")
    _connect(a, b)
    for i in range(3):
        a.send_message("bob", Message(b"%d" % i, ttl=None), 0.0)
    events = _exchange(a, b, 3)
    sent = [e for e in events if isinstance(e, MessageSent)]
    assert [e.settled for e in sent] == [True, True, True]
    assert [e for e in events if isinstance(e, MessageDelivered)] == []
    assert a.queued("bob") == []


def test_towards_a_capable_peer_the_ack_settles_the_message() -> None:
    a, b = Engine("alice"), Engine("bob")
    _connect(a, b)
    for i in range(3):
        a.send_message("bob", Message(b"%d" % i, ttl=None), 0.0)
    events = _exchange(a, b, 3)
    sent = [e for e in events if isinstance(e, MessageSent)]
    delivered = [e for e in events if isinstance(e, MessageDelivered)]
    assert [e.settled for e in sent] == [False, False, False]
    assert [e.uuid for e in delivered] == [e.uuid for e in sent]


def test_an_ack_that_overtakes_the_write_does_not_settle_twice() -> None:
    # async I/O: the ack is processed before data_sent() reports the write
    a, b = Engine("alice"), Engine("bob")
    a.connection_made("a", 0.0)
    b.connection_made("b", 0.0)
    b.receive_data("b", a.data_to_send("a"), 0.0)
    a.receive_data("a", b.data_to_send("b"), 0.0)
    a.send_message("bob", Message(b"x", ttl=None), 0.0)
    data = a.data_to_send("a")
    b.receive_data("b", data, 0.0)
    b.handed("b", 1)
    events = a.receive_data("a", b.data_to_send("b"), 0.0)
    events += a.data_sent("a", len(data))
    reported = [e for e in events if isinstance(e, MessageSent | MessageDelivered)]
    assert [type(e).__name__ for e in reported] == ["MessageSent", "MessageDelivered"]
    assert isinstance(reported[0], MessageSent) and not reported[0].settled


def test_settled_takes_no_part_in_equality() -> None:
    assert MessageSent("c", "bob", b"u" * 16, settled=True) == MessageSent("c", "bob", b"u" * 16)
