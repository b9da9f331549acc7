"""Restart with a deep persistent backlog (issue 14, item 4).

    python bench/scale_restart.py [--sizes 100000,1000000]

For each size n, n persistent 100-byte messages are stored in a real SQLite
file; then a fresh process opens a ``Messaging`` on it (sync, and anyio on
asyncio) and reports how much its RSS grew (``/proc/self/statm``) and how
long the restart took until ``Messaging`` was ready, and how many messages it
holds in memory.
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


def restart(script: str, db: str) -> tuple[float, float, int]:
    """(RSS growth in MiB, seconds until ready, messages in memory)."""
    out = subprocess.run(
        [sys.executable, "-c", script, db], capture_output=True, text=True, timeout=600, check=True
    )
    grown, ready, held = out.stdout.split()
    return int(grown) / 2**20, float(ready), int(held)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100000,1000000")
    args = p.parse_args()
    print("restart with n persistent messages queued: RSS growth, time until ready, held")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            db = os.path.join(tmp, f"restart{n}.db")
            store_backlog(db, "b", n)
            for name, script in (("sync", SYNC), ("anyio", ANYIO)):
                grown, ready, held = restart(script, db)
                print(f"  {name:5} {n:>10,} {grown:8.1f} MiB {ready:7.3f} s {held:>10,} held")
            os.unlink(db)


if __name__ == "__main__":
    main()
