"""Exchanging messages over real sockets: delivery semantics, legacy peers."""

from __future__ import annotations

import pytest
from snakemq.message import Message
from sync_helpers import Peer


def test_legacy_peer_gets_messages_sent_but_no_delivery_acks(peers: list[Peer]) -> None:
    new, old = Peer("new"), Peer("old", legacy=True)
    peers += [new, old]
    old.connect(new.listen())
    new.start()
    old.start()
    new.wait_connected("old")
    m1 = new.send("old", b"to the old one", ttl=None)
    m2 = old.send("new", b"from the old one", ttl=None)
    old.rec.wait_count("on_message_recv", 1)
    new.rec.wait_count("on_message_recv", 1)
    assert new.rec.wait_count("on_message_sent", 1)[0][1:] == ("old", m1.uuid)
    assert old.rec.wait_count("on_message_sent", 1)[0][1:] == ("new", m2.uuid)
    assert new.messaging.queued("old") == []
    assert new.rec.get("on_message_delivered") == []


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-peer", "capable-peer"])
def test_on_message_settled_when_the_message_is_done_with(peers: list[Peer], legacy: bool) -> None:
    # the one settlement rule of snakemq_proto: acknowledged by a capable peer,
    # or completely written to a 1.6 peer (the moment an anyio receipt resolves)
    a, b = Peer("a"), Peer("b", legacy=legacy)
    peers += [a, b]
    a.messaging.on_message_settled.add(a.rec.hook("on_message_settled"))
    b.connect(a.listen())
    a.start()
    b.start()
    a.wait_connected("b")
    m = a.send("b", b"settle me", ttl=None)
    assert a.rec.wait_count("on_message_settled", 1) == [("b", m.uuid)]
    b.rec.wait_count("on_message_recv", 1)
    assert a.messaging.queued("b") == []
    # reported after the event that settled it, in the same loop pass
    settled_by = "on_message_sent" if legacy else "on_message_delivered"
    assert [c[-1] for c in a.rec.get(settled_by)] == [m.uuid]
    if legacy:
        assert a.rec.get("on_message_delivered") == []


def test_sending_to_self_queues_and_never_delivers(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    a.wait_connected("b")
    to_self = a.send("a", b"me", ttl=None)
    a.send("b", b"marker", ttl=None)
    b.rec.wait_count("on_message_recv", 1)
    a.rec.wait_count("on_message_delivered", 1)
    assert a.received() == [] and b.received() == [b"marker"]
    assert [m.uuid for m in a.messaging.queued("a")] == [to_self.uuid]


def test_the_same_message_object_sent_twice_is_delivered_once(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    m = Message(b"once", ttl=None)
    a.messaging.send_message("b", m)
    a.messaging.send_message("b", m)
    a.send("b", b"marker", ttl=None)
    a.rec.wait_count("on_message_delivered", 3)
    assert b.received() == [b"once", b"marker"]
