"""Scale measurements for issue 14 (bounded, in-process, 127.0.0.1 only).

    python bench/scale.py [--expiry 10000,100000] [--backlog 10000,100000]
                          [--peers 10,100,400] [--skip-peers]

Prints, for the sync package with a real SQLite file:

* *expiry*: n persistent messages loaded from the storage run out together;
  the longest loop pass (gap between two ``select()`` calls) while they are
  dropped, and the time to drop them all;
* *backlog*: n persistent messages queued on disk for a peer that connects;
  the delivery time per message;

and for the anyio package: hub CPU per message sending to N peers in rounds
(every peer one message per round), the peers in a subprocess.  Each figure
is also given as a ratio to the smallest size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.storage.sqlite import SqliteQueuesStorage
from snakemq_proto import FLAG_PERSISTENT, Message, StorageBatch


def _prefill(db: str, ident: str, n: int, ttl: float | None) -> None:
    with SqliteQueuesStorage(db) as storage:
        storage.apply(
            StorageBatch(
                push=[
                    (ident, Message(b"x" * 100, ttl=ttl, flags=FLAG_PERSISTENT)) for _ in range(n)
                ]
            )
        )


def _peer(
    ident: str, storage: SqliteQueuesStorage | None = None
) -> tuple[snakemq.messaging.Messaging, snakemq.link.Link]:
    link = snakemq.link.Link()
    return snakemq.messaging.Messaging(ident, "", snakemq.packeter.Packeter(link), storage), link


def expiry(n: int, tmp: str) -> tuple[float, float]:
    """(longest loop pass that dropped messages, seconds to drop all n)."""
    db = os.path.join(tmp, f"expiry{n}.db")
    _prefill(db, "gone", n, ttl=1.0)
    m, link = _peer("a", SqliteQueuesStorage(db))
    done = threading.Event()
    dropped = 0
    first: list[float] = []

    def on_drop(ident: str, uuid: bytes) -> None:
        nonlocal dropped
        if not first:
            first.append(time.monotonic())
        dropped += 1
        if dropped == n:
            done.set()
            link.stop()

    m.on_message_drop.add(on_drop)
    selected = 0.0  # when the last select() began (it returns at once while drops are due)
    counted = 0
    longest = 0.0

    def before_select() -> None:  # deadline hooks run right before select()
        nonlocal selected
        selected = time.monotonic()

    def after_pass() -> None:  # after Messaging's own on_loop_pass (added first)
        nonlocal counted, longest
        if dropped != counted:
            counted = dropped
            longest = max(longest, time.monotonic() - selected)

    link.add_deadline_hook(before_select)
    link.on_loop_pass.add(after_pass)
    t = threading.Thread(target=link.loop, kwargs={"poll_timeout": 0.05})
    t.start()
    assert done.wait(600)
    end = time.monotonic()
    t.join()
    link.cleanup()
    if m.storage is not None:
        m.storage.close()
    return longest, end - first[0]


def backlog(n: int, tmp: str) -> float:
    """Seconds per message to deliver n persistent messages queued on disk."""
    db = os.path.join(tmp, f"backlog{n}.db")
    _prefill(db, "b", n, ttl=None)
    a, alink = _peer("a", SqliteQueuesStorage(db))
    b, blink = _peer("b")
    got = 0
    done = threading.Event()

    def on_recv(conn_id: str, ident: str, message: Message) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    b.on_message_recv.add(on_recv)
    port = alink.add_listener(("127.0.0.1", 0))[1]
    threads = [
        threading.Thread(target=x.loop, kwargs={"poll_timeout": 0.05}) for x in (alink, blink)
    ]
    threads[0].start()
    t0 = time.monotonic()
    blink.add_connector(("127.0.0.1", port))
    threads[1].start()
    assert done.wait(600)
    # delivered means acknowledged and deleted: wait until a's queue is empty
    while a.queued("b"):
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    for x in (alink, blink):
        x.stop()
    for th in threads:
        th.join()
    for x in (alink, blink):
        x.cleanup()
    if a.storage is not None:
        a.storage.close()
    return elapsed / n


def hub_cpu(peers: int, messages: int) -> float:
    """anyio hub CPU seconds per message sending to ``peers`` in rounds."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("scale_hub.py")), str(peers), str(messages)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(out.stdout.split()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--expiry", default="10000,100000")
    p.add_argument("--backlog", default="10000,100000")
    p.add_argument("--peers", default="10,100,400")
    p.add_argument("--hub-messages", type=int, default=40000)
    p.add_argument("--skip-peers", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [int(s) for s in args.expiry.split(",") if s]
        res = {n: expiry(n, tmp) for n in sizes}
        base = res[sizes[0]][0]
        print("expiry (sync, SQLite): n, longest loop pass, total drop time, pass ratio")
        for n, (stall, total) in res.items():
            print(f"  {n:>9,}  {stall * 1e3:8.1f} ms  {total:7.2f} s  x{stall / base:.2f}")
        sizes = [int(s) for s in args.backlog.split(",") if s]
        per = {n: backlog(n, tmp) for n in sizes}
        print("backlog delivery (sync, SQLite): n, per message, ratio")
        for n, t in per.items():
            print(f"  {n:>9,}  {t * 1e6:8.1f} us  x{t / per[sizes[0]]:.2f}")
    if not args.skip_peers:
        counts = [int(s) for s in args.peers.split(",") if s]
        cpu = {n: hub_cpu(n, args.hub_messages) for n in counts}
        print("anyio hub sending in rounds: peers, CPU per message, ratio")
        for n, c in cpu.items():
            print(f"  {n:>9,}  {c * 1e6:8.1f} us  x{c / cpu[counts[0]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
