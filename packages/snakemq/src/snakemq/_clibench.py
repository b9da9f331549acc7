"""``snakemq bench``: a quick throughput run of this installation.

The receiver is a separate process (``snakemq listen --quiet``) so that
sender and receiver do not share one interpreter lock; the figure is messages
acknowledged per second.  ``tox -e bench`` is the full, comparative harness.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import TextIO

from snakemq._cli_peer import EXIT_FAILED, EXIT_OK, Peer
from snakemq.message import Message


def run_bench(count: int, size: int, out: TextIO) -> int:

    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemq",
            "listen",
            "--ident",
            "bench-rx",
            "--listen",
            "127.0.0.1:0",
            "--quiet",
            "--count",
            str(count),
            "--timeout",
            "300",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    peer: Peer | None = None
    try:
        assert receiver.stderr is not None
        line = receiver.stderr.readline()
        if "listening on" not in line:
            print(f"error: the receiver did not start: {line.strip()}", file=sys.stderr)
            return EXIT_FAILED
        host, _, port = line.rsplit(" ", 1)[1].strip().rpartition(":")
        peer = Peer("bench-tx")
        done = threading.Event()
        acked = 0

        def on_delivered(ident: str, uuid: bytes) -> None:
            nonlocal acked
            acked += 1
            if acked == count:
                done.set()

        connected = threading.Event()
        peer.messaging.on_message_delivered.add(on_delivered)
        peer.messaging.on_connect.add(lambda conn_id, ident: connected.set())
        peer.connect((host, int(port)), None)
        peer.start()
        if not connected.wait(10):
            print("error: could not connect to the receiver", file=sys.stderr)
            return EXIT_FAILED
        payload = b"x" * size
        print(f"sending {count} messages of {size} B ...", file=out, flush=True)
        start = time.perf_counter()
        for _ in range(count):
            peer.messaging.send_message("bench-rx", Message(payload, ttl=60))
        while not done.wait(1.0):
            print(f"  {acked}/{count} acknowledged", file=out, flush=True)
            if time.perf_counter() - start > 300:
                print("error: not finished within 300 s", file=sys.stderr)
                return EXIT_FAILED
        elapsed = time.perf_counter() - start
        rate = count / elapsed
        print(
            f"{count} messages of {size} B acknowledged in {elapsed:.2f} s: "
            f"{rate:,.0f} msg/s, {rate * size / 1e6:,.1f} MB/s",
            file=out,
        )
        return EXIT_OK
    finally:
        if peer is not None:
            peer.close()
        receiver.kill()
        receiver.wait()
        if receiver.stderr is not None:
            receiver.stderr.close()
