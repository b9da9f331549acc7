"""De-duplication over real sockets: a resend after a reconnect is handed once;
a peer gone longer than ``dedup_linger`` stops costing memory."""

from __future__ import annotations

import os
import socket
import threading

from snakemq_proto import PacketDecoder
from snakemq_proto.testing import acked, capable_peer_bytes
from sync_helpers import WAIT, Peer


def _send_and_wait_ack(port: int, ident: str, uuids: list[bytes]) -> None:
    """A capable peer ``ident`` sends a message per uuid, waits for the ack of
    the last one, and leaves."""
    decoder = PacketDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(capable_peer_bytes(ident, uuids))
        while True:
            data = sock.recv(65536)
            assert data, f"{ident}: closed before the ack of {uuids[-1]!r}"
            if acked(decoder, data, uuids[-1]):
                return


def test_a_resend_after_a_reconnect_is_not_handed_twice(peers: list[Peer]) -> None:
    srv = Peer("srv")
    peers.append(srv)
    port = srv.listen()
    srv.start()
    first, second = os.urandom(16), os.urandom(16)
    _send_and_wait_ack(port, "p", [first])
    srv.rec.wait_count("on_disconnect", 1)
    _send_and_wait_ack(port, "p", [first, second])  # its ack was "lost": resent
    assert srv.received() == [first, second]


def test_gone_peers_windows_are_forgotten_after_dedup_linger(peers: list[Peer]) -> None:
    srv = Peer("srv")
    peers.append(srv)
    engine = srv.messaging.engine
    engine.dedup_linger = 0.3
    port = srv.listen()
    srv.start()
    for i in range(50):
        _send_and_wait_ack(port, f"short{i}", [os.urandom(16)])
    srv.rec.wait_count("on_disconnect", 50)
    forgotten = threading.Event()

    def check() -> None:  # on the loop thread, after the pass's timeouts
        if not engine._windows:
            forgotten.set()

    srv.link.on_loop_pass.add(check)
    assert forgotten.wait(WAIT), f"{len(engine._windows)} windows left"
    assert len(srv.received()) == 50
    with srv.messaging.lock:
        assert not engine._windows and not engine._queues and not engine._gone
