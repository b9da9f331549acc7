"""TTL over real sockets."""

from __future__ import annotations

from sync_helpers import Peer


def test_ttl_expires_while_disconnected_and_is_never_delivered(peers: list[Peer]) -> None:
    a, b = Peer("a"), Peer("b")
    peers += [a, b]
    port = a.listen()
    b.connect(port)
    a.start()
    b.start()
    a.wait_connected("b")
    b.stop()
    peers.remove(b)
    a.rec.wait_count("on_disconnect", 1)
    doomed = a.send("b", b"doomed", ttl=0.3)
    kept = a.send("b", b"kept", ttl=30)
    assert a.rec.wait_count("on_message_drop", 1) == [("b", doomed.uuid)]
    assert [m.uuid for m in a.messaging.queued("b")] == [kept.uuid]
    b2 = Peer("b")
    peers.append(b2)
    b2.connect(port)
    b2.start()
    b2.rec.wait_count("on_message_recv", 1)
    a.rec.wait_count("on_message_delivered", 1)
    assert b2.received() == [b"kept"]
    assert len(a.rec.get("on_message_drop")) == 1
