"""Two peers that dial each other (the tutorial's Bob and Jack) settle on one
connection, and the connector whose dial lost stops dialling while that
connection lives (``RedialHeld``), then redials at once when it ends."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sync_helpers import WAIT, Peer

RECONNECT = 0.05
QUIET_WINDOW = 20 * RECONNECT  # without the hold, about ten refused dials would fit in here


def dial_counter(peer: Peer) -> tuple[list[str], threading.Event]:
    """Connections the peer's link made or accepted; the event is set on each."""
    made: list[str] = []
    happened = threading.Event()

    def on_connect(conn_id: str) -> None:
        made.append(conn_id)
        happened.set()

    peer.link.on_connect.add(on_connect)
    return made, happened


def test_the_losing_connector_waits_while_the_peer_is_connected_then_redials(
    peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, jack = Peer("bob"), Peer("jack")
    peers += [bob, jack]
    for peer in (bob, jack):
        peer.link.reconnect_interval = RECONNECT
    bob_port, jack_port = bob.listen(), jack.listen()
    bob.connect(jack_port)
    jack.connect(bob_port)
    bob_made, _ = dial_counter(bob)
    jack_made, jack_new = dial_counter(jack)
    hold_redial = jack.link.hold_redial

    def recorded_hold(conn_id: str) -> Any:
        address = hold_redial(conn_id)
        jack.rec.hook("held")(address)
        return address

    monkeypatch.setattr(jack.link, "hold_redial", recorded_hold)
    bob.start()
    jack.start()
    bob.wait_connected("jack")
    jack.wait_connected("bob")
    # settled: jack's dial lost ("bob" < "jack"), so jack's connector is held;
    # from here on nobody dials anybody
    held = jack.rec.wait_count("held", 1)
    assert held == [(("127.0.0.1", bob_port),)]
    kept = jack.messaging.connected_idents()["bob"]
    settled = len(jack_made), len(bob_made)
    jack_new.clear()
    assert not jack_new.wait(QUIET_WINDOW), f"jack saw another connection: {jack_made}"
    assert (len(jack_made), len(bob_made)) == settled
    assert jack.messaging.connected_idents() == {"bob": kept}
    assert jack.rec.get("on_error") == [] or all(
        "already connected" in str(args[1]) for args in jack.rec.get("on_error")
    )

    # the kept connection ends: jack's connector is released and dials at once
    closed = threading.Event()

    def close_kept() -> None:
        if not closed.is_set():
            closed.set()
            jack.link.close(kept)

    jack.link.on_loop_pass.add(close_kept)
    jack.link.wakeup_poll()
    jack.rec.wait(
        lambda: any(args[0] == kept for args in jack.rec.get("on_disconnect")),
        what="the kept connection closed",
    )
    bob.wait_connected("jack")
    jack.wait_connected("bob")
    assert jack.messaging.connected_idents()["bob"] != kept
    jack.send("bob", b"after the redial", ttl=None)
    bob.rec.wait(lambda: bob.received() == [b"after the redial"], WAIT)
