"""The anyio hub of ``scale.py``: CPU per message sending to N peers in rounds,
and the peak RSS of a hub (sync or anyio) receiving from N peers.

    python bench/scale_hub.py PEERS MESSAGES        # prints the hub's CPU s/message
    python bench/scale_hub.py --recv anyio|sync PEERS MESSAGES_PER_PEER
        # prints the hub's peak RSS (VmHWM, MiB) and its RSS before any peer

The hub (this process) listens on 127.0.0.1; a child process runs the PEERS
anyio peers on one event loop (receiving, ``--peers``; or each sending
MESSAGES_PER_PEER x 100 B to the hub as fast as it can, ``--senders``); it
is killed at the end.  Only the hub's CPU time of the sending rounds is
counted.
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


async def _senders(n: int, port: int, each: int) -> None:
    async def sender(i: int) -> None:
        async with Messaging(f"p{i}") as m:
            await m.add_connector(("127.0.0.1", port))
            payload = b"x" * 100
            for _ in range(each):
                await m.send_message("hub", Message(payload, ttl=None))
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(sender, i)


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _spawn_senders(n: int, port: int, each: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--senders", str(n), str(port), str(each)])


async def _recv_anyio(n: int, each: int) -> tuple[float, float]:
    async with Messaging("hub") as hub:
        _, port = await hub.add_listener(("127.0.0.1", 0))
        idle = _rss_mib("VmRSS")
        child = _spawn_senders(n, port, each)
        try:
            with anyio.fail_after(600):
                got = 0
                while got < n * each:
                    got += len(await hub.receive_batch())
        finally:
            child.kill()
            child.wait()
    return idle, _rss_mib("VmHWM")


def _recv_sync(n: int, each: int) -> tuple[float, float]:
    import threading

    import snakemq.link
    import snakemq.messaging
    import snakemq.packeter

    link = snakemq.link.Link()
    messaging = snakemq.messaging.Messaging("hub", "", snakemq.packeter.Packeter(link))
    port = link.add_listener(("127.0.0.1", 0))[1]
    done = threading.Event()
    got = 0

    def on_recv(conn_id: str, ident: str, message: Message) -> None:
        nonlocal got
        got += 1
        if got == n * each:
            done.set()

    messaging.on_message_recv.add(on_recv)
    thread = threading.Thread(target=link.loop, kwargs={"poll_timeout": 0.5})
    thread.start()
    idle = _rss_mib("VmRSS")
    child = _spawn_senders(n, port, each)
    try:
        assert done.wait(600), f"received {got} of {n * each}"
    finally:
        child.kill()
        child.wait()
        link.stop()
        thread.join()
        link.cleanup()
    return idle, _rss_mib("VmHWM")


def main() -> int:
    if sys.argv[1] == "--peers":
        anyio.run(_peers, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if sys.argv[1] == "--senders":
        anyio.run(_senders, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if sys.argv[1] == "--recv":
        n, each = int(sys.argv[3]), int(sys.argv[4])
        if sys.argv[2] == "sync":
            idle, peak = _recv_sync(n, each)
        else:
            idle, peak = anyio.run(_recv_anyio, n, each)
        print(
            f"{sys.argv[2]} hub receiving {n} x {each}: peak RSS {peak:.1f} MiB (idle {idle:.1f})"
        )
        return 0
    print(anyio.run(_hub, int(sys.argv[1]), int(sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
