"""Restart with a deep persistent backlog (issue 14, item 4).

    python bench/scale_restart.py [--sizes 100000,1000000] [--live]

For each size n, n persistent 100-byte messages are stored in a real SQLite
file; then a fresh process opens a ``Messaging`` on it (sync, and anyio on
asyncio) and reports how much its RSS grew (``/proc/self/statm``) and how
long the restart took until ``Messaging`` was ready, and how many messages it
holds in memory.

With ``--live``: a fresh process with an empty SQLite file sends n persistent
100-byte messages to a peer that is away (sync: one ``send_message`` after
the other; anyio on asyncio: 32 producer tasks, their receipts dropped) and
reports its RSS growth, the time the sends took and the messages it holds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from snakemq_proto import FLAG_PERSISTENT, Message, SqliteQueuesStorage, StorageBatch


def store_backlog(db: str, ident: str, n: int) -> None:
    with SqliteQueuesStorage(db) as storage:
        for start in range(0, n, 50_000):
            batch = [
                (ident, Message(b"x" * 100, ttl=None, flags=FLAG_PERSISTENT))
                for _ in range(start, min(n, start + 50_000))
            ]
            storage.apply(StorageBatch(push=batch))


_RSS = """
import os, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
"""

SYNC = (
    _RSS
    + """
import snakemq.link, snakemq.messaging, snakemq.packeter
from snakemq.storage.sqlite import SqliteQueuesStorage
base = rss()
t = time.monotonic()
m = snakemq.messaging.Messaging(
    "a", "", snakemq.packeter.Packeter(snakemq.link.Link()), SqliteQueuesStorage(sys.argv[1])
)
print(rss() - base, time.monotonic() - t, len(m.queued("b")))
"""
)

ANYIO = (
    _RSS
    + """
import anyio
from snakemq_anyio import Messaging, SqliteQueuesStorage
async def main():
    base = rss()
    t = time.monotonic()
    async with Messaging("a", storage=SqliteQueuesStorage(sys.argv[1])) as m:
        print(rss() - base, time.monotonic() - t, len(m.queued("b")))
anyio.run(main)
"""
)


SEND = """
data = [b"%06d" % i + b"x" * 94 for i in range(100)]
"""

SYNC_LIVE = (
    _RSS
    + SEND
    + """
import snakemq.link, snakemq.messaging, snakemq.packeter
from snakemq.message import FLAG_PERSISTENT, Message
from snakemq.storage.sqlite import SqliteQueuesStorage
m = snakemq.messaging.Messaging(
    "a", "", snakemq.packeter.Packeter(snakemq.link.Link()), SqliteQueuesStorage(sys.argv[1])
)
n = int(sys.argv[2])
base = rss()
t = time.monotonic()
for i in range(n):
    m.send_message("b", Message(data[i % 100], ttl=3600, flags=FLAG_PERSISTENT))
print(rss() - base, time.monotonic() - t, len(m.queued("b")))
"""
)

ANYIO_LIVE = (
    _RSS
    + SEND
    + """
import anyio
from snakemq_anyio import FLAG_PERSISTENT, Message, Messaging, SqliteQueuesStorage
async def produce(m, p, n):
    for i in range(p, n, 32):
        await m.send_message("b", Message(data[i % 100], ttl=3600, flags=FLAG_PERSISTENT))
async def main():
    n = int(sys.argv[2])
    async with Messaging("a", storage=SqliteQueuesStorage(sys.argv[1])) as m:
        base = rss()
        t = time.monotonic()
        async with anyio.create_task_group() as tg:
            for p in range(32):
                tg.start_soon(produce, m, p, n)
        print(rss() - base, time.monotonic() - t, len(m.queued("b")))
anyio.run(main)
"""
)


def restart(script: str, db: str, *args: str) -> tuple[float, float, int]:
    """(RSS growth in MiB, seconds until ready, messages in memory)."""
    out = subprocess.run(
        [sys.executable, "-c", script, db, *args],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    grown, ready, held = out.stdout.split()
    return int(grown) / 2**20, float(ready), int(held)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--live", action="store_true", help="sends to an absent peer instead")
    args = p.parse_args()
    if args.live:
        live([int(x) for x in args.sizes.split(",") if x])
        return
    print("restart with n persistent messages queued: RSS growth, time until ready, held")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            db = os.path.join(tmp, f"restart{n}.db")
            store_backlog(db, "b", n)
            for name, script in (("sync", SYNC), ("anyio", ANYIO)):
                grown, ready, held = restart(script, db)
                print(f"  {name:5} {n:>10,} {grown:8.1f} MiB {ready:7.3f} s {held:>10,} held")
            os.unlink(db)


def live(sizes: list[int]) -> None:
    print("n persistent sends to an absent peer: RSS growth, time of the sends, held")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for name, script in (("sync", SYNC_LIVE), ("anyio", ANYIO_LIVE)):
                db = os.path.join(tmp, f"live{n}{name}.db")
                grown, took, held = restart(script, db, str(n))
                print(f"  {name:5} {n:>10,} {grown:8.1f} MiB {took:7.1f} s {held:>10,} held")
                os.unlink(db)


if __name__ == "__main__":
    main()
