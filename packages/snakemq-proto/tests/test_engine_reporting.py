"""report_sent / report_delivered: events nobody listens to are not built,
and the queue rules do not change."""

from __future__ import annotations

import pytest
from snakemq_proto import Engine, Message, MessageDelivered, MessageReceived, MessageSent


@pytest.mark.parametrize("report", [True, False])
def test_reporting_switches(report: bool) -> None:
    a, b = Engine("alice"), Engine("bob")
    a.report_sent = a.report_delivered = report
    a.connection_made("a", 0.0)
    b.connection_made("b", 0.0)
    for i in range(3):
        a.send_message("bob", Message(b"%d" % i, ttl=None), 0.0)
    events = []
    received = 0
    for _ in range(5):
        x, y = a.data_to_send("a"), b.data_to_send("b")
        events += a.data_sent("a", len(x))
        b.data_sent("b", len(y))
        got = [e for e in b.receive_data("b", x, 0.0) if isinstance(e, MessageReceived)]
        received += len(got)
        b.handed("b", len(got))
        events += a.receive_data("a", y, 0.0)
    assert received == 3
    assert a.queued("bob") == []  # acknowledged and gone either way
    sent = [e for e in events if isinstance(e, MessageSent)]
    delivered = [e for e in events if isinstance(e, MessageDelivered)]
    assert (len(sent), len(delivered)) == ((3, 3) if report else (0, 0))
