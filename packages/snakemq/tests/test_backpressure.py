"""send_message from a producer thread blocks while a connected peer's queue
is full, so a receiver that stops reading cannot make the sender grow."""

from __future__ import annotations

import socket
import threading

from snakemq_proto import (
    CAP_ACK,
    Capabilities,
    Frame,
    Identification,
    ProtocolVersion,
    encode_packet,
)
from sync_helpers import WAIT, Peer


def _silent_capable_peer(port: int, ident: str) -> socket.socket:
    """A peer that completes the handshake, announces a huge window, then
    never reads or acknowledges anything."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hello: list[Frame] = [
        ProtocolVersion(),
        Capabilities(CAP_ACK, 1_000_000),
        Identification(ident),
    ]
    sock.sendall(b"".join(encode_packet(f.encode()) for f in hello))
    return sock


class _SignallingCondition(threading.Condition):
    """Tells the test when a producer starts waiting for queue space."""

    def __init__(self, lock: threading.Lock, entered: threading.Event) -> None:
        super().__init__(lock)
        self.entered = entered

    def wait(self, timeout: float | None = None) -> bool:
        self.entered.set()
        return super().wait(timeout)


def test_producer_blocks_at_max_queued_and_resumes_when_the_peer_goes(peers: list[Peer]) -> None:
    sender = Peer("sender", max_queued=200)
    peers.append(sender)
    port = sender.listen()
    sender.start()
    raw = _silent_capable_peer(port, "silent")
    try:
        sender.wait_connected("silent")
        pushed = 0
        done = threading.Event()
        blocked = threading.Event()
        sender.messaging._room = _SignallingCondition(sender.messaging._lock, blocked)

        def produce() -> None:
            nonlocal pushed
            for _ in range(5_000):
                sender.send("silent", b"x" * 1000, ttl=None)
                pushed += 1
            done.set()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        # the producer blocks once 200 messages wait (nothing is ever acknowledged)
        assert blocked.wait(WAIT)
        assert pushed == 200
        assert len(sender.messaging.queued("silent")) == 200
        assert not done.is_set()
    finally:
        raw.close()
    # the peer went away: queues grow again (TTL applies), the producer finishes
    assert done.wait(WAIT)
    assert pushed == 5_000
    producer.join(WAIT)


def test_the_loop_thread_never_blocks(peers: list[Peer]) -> None:
    sender = Peer("sender", max_queued=10)
    peers.append(sender)
    port = sender.listen()
    sender.start()
    raw = _silent_capable_peer(port, "silent")
    try:
        sender.wait_connected("silent")
        finished = threading.Event()

        def from_the_loop() -> None:
            sender.link.on_loop_pass.remove(from_the_loop)
            for _ in range(100):
                sender.send("silent", b"y", ttl=None)
            finished.set()

        sender.link.on_loop_pass.add(from_the_loop)
        sender.link.wakeup_poll()
        assert finished.wait(WAIT)
        assert len(sender.messaging.queued("silent")) == 100
    finally:
        raw.close()
