"""Memory of the receive side's de-duplication window (issue 14), measured
with tracemalloc (the Python heap, not RSS).

    python bench/dedup_memory.py [--peers 20000]

Prints: bytes per uuid of a full window (``2 * window`` uuids, the default
window), bytes per peer for a full window, and the memory ``peers``
short-lived identifiers that each sent one message keep once they have all
gone, before and after the engine's ``dedup_linger`` (an engine without it
never forgets them).
"""

from __future__ import annotations

import argparse
import os
import tracemalloc

from snakemq_proto import DEFAULT_WINDOW, Engine, Message, MessageReceived
from snakemq_proto._window import PeerWindow, ReceiveWindow


def full_window() -> tuple[float, int]:
    keep = 2 * DEFAULT_WINDOW
    window = PeerWindow(keep)
    rx = ReceiveWindow(window, 64)
    events: list[object] = []
    raw = [bytearray(os.urandom(16)) for _ in range(3 * keep)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    worst = 0
    for i in range(0, len(raw), 7):  # handed 7 at a time
        rx.receive([Message(b"", uuid=bytes(u)) for u in raw[i : i + 7]], "c", "a", events)  # type: ignore[arg-type]
        rx.handed(len(events), "a", None)
        if rx.ack_count:
            rx.take_ack()
        events.clear()
        worst = max(worst, tracemalloc.get_traced_memory()[0] - base)
    tracemalloc.stop()
    return worst / keep, worst


def gone_peers(n: int) -> tuple[int, int]:
    """n peers each hand one message over an in-memory connection, then leave."""
    engine = Engine("bob", dedup_linger=30) if _has_linger() else Engine("bob")
    now = 1000.0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        conn = f"c{i}"
        engine.connection_made(conn, now)
        sender = Engine(f"s{i}")
        sender.connection_made("x", now)
        sender.send_message("bob", Message(b"x", ttl=None), now)
        handed = 0
        for _ in range(4):  # both ways until the message is handed and acked
            data = engine.data_to_send(conn)
            engine.data_sent(conn, len(data))
            sender.receive_data("x", data, now)
            data = sender.data_to_send("x")
            sender.data_sent("x", len(data))
            events = engine.receive_data(conn, data, now)
            handed += sum(isinstance(e, MessageReceived) for e in events)
            if handed:
                engine.handed(conn, handed)
                handed = 0
        engine.connection_lost(conn, now)
        del sender
    gone = tracemalloc.get_traced_memory()[0] - base
    now += 30
    while (deadline := engine.next_deadline()) is not None and deadline <= now:
        engine.handle_timeout(now)
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return gone, after


def _has_linger() -> bool:
    return hasattr(Engine("x"), "dedup_linger")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20_000)
    args = parser.parse_args()
    per_uuid, per_peer = full_window()
    print(f"full window ({2 * DEFAULT_WINDOW} uuids): {per_uuid:.1f} B/uuid, {per_peer:,} B/peer")
    gone, after = gone_peers(args.peers)
    print(
        f"{args.peers:,} peers gone (one message each): {gone:,} B "
        f"({gone / args.peers:.0f} B/peer); after 30 s: {after:,} B "
        f"(linger {'30 s' if _has_linger() else 'none'})"
    )


if __name__ == "__main__":
    main()
