"""Listener under connection churn: sync against anyio (issue 13, item 11).

    python bench/churn.py                      # sync, anyio-asyncio, anyio-trio
    python bench/churn.py --impls sync --plain 2000 --tls 500 --idle 600

The listener runs in a process of its own (``serve``: plain and TLS
listeners, it prints their ports); this process is the client:

* ``plain``: that many TCP connects, each closed at once;
* ``tls``: that many TLS connects, each through its handshake, then closed;
* ``idle``: that many connections opened and kept, each sending a handshake
  (PROTOCOL_VERSION, IDENTIFICATION under its own identifier) and waiting
  for the listener's greeting — the time until the listener served them all.

Connects that took more than 0.5 s (a dropped SYN waits a 1 s retransmit)
are counted.  Timings on a loaded machine vary: compare implementations
from the same run.  Not a test; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMPLS = ("sync", "anyio-asyncio", "anyio-trio")
VERSION = struct.pack("!IBI", 5, 0, 1)


def _ident(name: str) -> bytes:
    raw = name.encode()
    return struct.pack("!IB", len(raw) + 1, 2) + raw


# ------------------------------------------------------------------- server


def serve(impl: str, certfile: str) -> None:
    from snakemq_proto import SSLConfig

    tls = SSLConfig(certfile, certfile)
    # the idle connections identify; lift the cap on waiting ones all the same
    # (absent before issue 13's item 3: the script also measures older trees)
    opts: dict[str, Any] = {}

    if impl == "sync":
        import threading

        import snakemq.link
        import snakemq.messaging
        import snakemq.packeter

        link = snakemq.link.Link()
        packeter = snakemq.packeter.Packeter(link)
        if "max_unidentified" in inspect.signature(snakemq.messaging.Messaging).parameters:
            opts["max_unidentified"] = 100_000
        snakemq.messaging.Messaging("churn-srv", "", packeter, **opts)
        plain = link.add_listener(("127.0.0.1", 0))[1]
        secure = link.add_listener(("127.0.0.1", 0), ssl_config=tls)[1]
        print(json.dumps([plain, secure]), flush=True)

        def stop_on_eof() -> None:
            sys.stdin.read()
            link.stop()

        threading.Thread(target=stop_on_eof, daemon=True).start()
        link.loop(poll_timeout=0.5)
        return

    import anyio
    from snakemq_anyio import Messaging

    if "max_unidentified" in inspect.signature(Messaging).parameters:
        opts["max_unidentified"] = 100_000

    async def main() -> None:
        async with Messaging("churn-srv", **opts) as m:
            plain = (await m.add_listener(("127.0.0.1", 0)))[1]
            secure = (await m.add_listener(("127.0.0.1", 0), tls))[1]
            print(json.dumps([plain, secure]), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)

    anyio.run(main, backend=impl.split("-", 1)[1])


# ------------------------------------------------------------------- client


def _timed_connect(port: int, slow: list[float]) -> socket.socket:
    t = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    took = time.monotonic() - t
    if took > 0.5:
        slow.append(took)
    return sock


def measure(impl: str, plain_n: int, tls_n: int, idle_n: int, certfile: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", impl, certfile],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        plain, secure = json.loads(proc.stdout.readline())
        out: dict[str, Any] = {"impl": impl}
        slow: list[float] = []
        t = time.monotonic()
        for _ in range(plain_n):
            _timed_connect(plain, slow).close()
        out["plain_s"] = round(time.monotonic() - t, 2)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = time.monotonic()
        for _ in range(tls_n):
            sock = _timed_connect(secure, slow)
            with ctx.wrap_socket(sock) as tls_sock:
                tls_sock.do_handshake()
        out["tls_s"] = round(time.monotonic() - t, 2)
        out["churn_s"] = round(out["plain_s"] + out["tls_s"], 2)
        t = time.monotonic()
        idle = []
        for i in range(idle_n):
            sock = _timed_connect(plain, slow)
            sock.sendall(VERSION + _ident(f"idle{i}"))
            idle.append(sock)
        for sock in idle:  # served: the listener greeted every one
            got = b""
            while len(got) < len(VERSION):
                chunk = sock.recv(len(VERSION) - len(got))
                if not chunk:
                    raise RuntimeError(f"{impl}: an idle connection was closed")
                got += chunk
        out["idle_s"] = round(time.monotonic() - t, 2)
        for sock in idle:
            sock.close()
        out["slow_connects"] = len(slow)
        return out
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--plain", type=int, default=5000)
    parser.add_argument("--tls", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=1200)
    args = parser.parse_args()
    import trustme

    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp:
        certfile = str(Path(tmp) / "srv.pem")
        ca.issue_cert("churn-srv").private_key_and_cert_chain_pem.write_to_path(certfile)
        print(f"{'impl':<15}{'plain':>8}{'tls':>8}{'churn':>8}{'idle':>8}{'>0.5s':>7}")
        for impl in args.impls.split(","):
            r = measure(impl, args.plain, args.tls, args.idle, certfile)
            print(
                f"{impl:<15}{r['plain_s']:>8}{r['tls_s']:>8}{r['churn_s']:>8}"
                f"{r['idle_s']:>8}{r['slow_connects']:>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
