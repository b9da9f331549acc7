"""The anyio hub of ``scale.py``: CPU per message sending to N peers in rounds.

    python bench/scale_hub.py PEERS MESSAGES        # prints the hub's CPU s/message

The hub (this process) listens on 127.0.0.1; a child process (``--peers``)
runs the PEERS receiving peers on one event loop; it is killed at the end.  Only the hub's CPU time of the sending rounds is counted.
"""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
from snakemq_anyio import Message, Messaging


async def _peers(n: int, port: int, total: int) -> None:
    async def peer(i: int) -> None:
        async with Messaging(f"p{i}") as m:
            await m.add_connector(("127.0.0.1", port))
            while True:
                await m.receive_batch()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(peer, i)


async def _hub(n: int, total: int) -> float:
    async with Messaging("hub") as hub:
        _, port = await hub.add_listener(("127.0.0.1", 0))
        child = subprocess.Popen(
            [sys.executable, __file__, "--peers", str(n), str(port), str(total)]
        )
        try:
            with anyio.fail_after(120):
                for i in range(n):
                    await hub.wait_connected(f"p{i}")
            payload = b"x" * 100
            t0 = time.process_time()
            receipts = [
                await hub.send_message(f"p{i % n}", Message(payload, ttl=None))
                for i in range(total)
            ]
            with anyio.fail_after(300):
                for r in receipts[-n:]:
                    await r.delivered()
            cpu = time.process_time() - t0
        finally:
            child.kill()  # its peers wait in receive_batch() forever
            child.wait()
    return cpu / total


def main() -> int:
    if sys.argv[1] == "--peers":
        anyio.run(_peers, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    print(anyio.run(_hub, int(sys.argv[1]), int(sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
