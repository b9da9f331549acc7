"""The three-peer mesh of the tutorial, over real loopback sockets."""

from __future__ import annotations

from sync_helpers import Peer


def test_tutorial_mesh_every_pair_exchanges(peers: list[Peer]) -> None:
    bob, alice, jack = Peer("bob"), Peer("alice"), Peer("jack")
    peers += [bob, alice, jack]
    bob_port = bob.listen("")
    jack_port = jack.listen("")
    bob.connect(jack_port, "localhost")
    alice.connect(bob_port, "localhost")
    alice.connect(jack_port, "localhost")
    jack.connect(bob_port, "localhost")
    for p in peers:
        p.start()
    bob.wait_connected("alice", "jack")
    alice.wait_connected("bob", "jack")
    jack.wait_connected("alice", "bob")
    names = ["bob", "alice", "jack"]
    for sender in peers:
        for dest in names:
            if dest != sender.ident:
                sender.send(dest, f"{sender.ident}->{dest}".encode(), ttl=600)
    for receiver in peers:
        receiver.rec.wait_count("on_message_recv", 2)
    for receiver in peers:
        got = sorted(receiver.received())
        expected = sorted(f"{s}->{receiver.ident}".encode() for s in names if s != receiver.ident)
        assert got == expected
        for conn_id, ident, message in receiver.rec.get("on_message_recv"):
            assert message.data.startswith(ident.encode() + b"->")
            assert receiver.messaging.connected_idents()[ident] == conn_id
