"""TTL over real sockets."""

from __future__ import annotations

import time
from pathlib import Path

from snakemq.message import FLAG_PERSISTENT, Message
from snakemq.storage.sqlite import SqliteQueuesStorage
from snakemq_proto import StorageBatch
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


def test_mass_expiry_of_stored_messages_does_not_stall_the_loop(
    peers: list[Peer], tmp_path: Path
) -> None:
    """Issue 14: 50k persistent messages (real SQLite, six windows of
    ``QUEUE_WINDOW`` read back while they expire) running out together are
    dropped in bounded passes: a round trip with another peer completes
    quickly all the while, every message is dropped once, in order, and its
    row is deleted.

    Before the bounded expiry (4439d55^) one pass dropped all 50k during one
    round trip, which took 1.6-1.8 s on the 2-core test machine, loaded; now
    well under the 1 s bound (0.5 s was exceeded there at 100k, loaded:
    0.54 s).  The drops seen during one round trip do not depend on the
    machine's load: at most n/2 (a window's worth, 8k, in practice)."""
    n = 50_000
    db = str(tmp_path / "q.db")
    doomed = [Message(b"%d" % i, ttl=2.0, flags=FLAG_PERSISTENT) for i in range(n)]
    with SqliteQueuesStorage(db) as storage:
        storage.apply(StorageBatch(push=[("gone", m) for m in doomed]))
    a = Peer("a", SqliteQueuesStorage(db))  # loads them: they start aging now
    b = Peer("b")
    peers += [a, b]
    b.connect(a.listen())
    a.start()
    b.start()
    b.wait_connected("a")
    rtts: list[float] = []
    steps: list[int] = []  # drops seen during each round trip
    drops = a.rec.calls.setdefault("on_message_drop", [])
    while len(drops) < n:  # a list's len() is atomic: no lock needed to read it
        t = time.monotonic()
        before = len(drops)
        b.send("a", b"ping", ttl=None)
        b.rec.wait_count("on_message_delivered", len(rtts) + 1)
        rtts.append(time.monotonic() - t)  # before, during and at the end of the expiry
        steps.append(len(drops) - before)
        assert len(rtts) < 50_000, "the expiry did not end"
    assert a.rec.get("on_message_drop") == [("gone", m.uuid) for m in doomed]
    assert max(steps) <= n // 2, f"{max(steps)} drops during one round trip"
    assert max(rtts) < 1.0, f"a round trip took {max(rtts):.3f} s during the expiry"
    a.stop()
    peers.remove(a)
    assert a.messaging.storage is not None
    a.messaging.storage.close()
    with SqliteQueuesStorage(db) as storage:
        assert storage.load().queues.get("gone", []) == []
