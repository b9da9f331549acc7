"""``snakemq demo``: what snakemq does, shown and checked step by step.

Every step checks what it claims; the demo exits 0 only if all of them did.
Everything runs on 127.0.0.1 in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TextIO

from snakemq._cli_peer import EXIT_FAILED, EXIT_OK, Peer
from snakemq.link import SSLConfig
from snakemq.message import Message

STEP_TIMEOUT = 20.0


class StepFailed(Exception):
    pass


def _wait(event: threading.Event, what: str, timeout: float = STEP_TIMEOUT) -> None:
    if not event.wait(timeout):
        raise StepFailed(f"{what} did not happen within {timeout:g} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_demo(out: TextIO) -> int:

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    try:
        import trustme
    except ImportError:
        say("snakemq demo needs trustme to make certificates: python -m pip install trustme")
        return EXIT_FAILED

    tmp = tempfile.mkdtemp(prefix="snakemq-demo-")
    peers: list[Peer] = []
    procs: list[subprocess.Popen[str]] = []
    passed = 0
    steps = 5
    try:
        say("snakemq demo — brokerless, reliable messaging between peers\n")

        say("1. A certificate authority and certificates for alice, bob and carol (made now).")
        ca = trustme.CA()
        ca_path = os.path.join(tmp, "ca.pem")
        ca.cert_pem.write_to_path(ca_path)
        certs: dict[str, str] = {}
        for name in ("alice", "bob", "carol"):
            certs[name] = os.path.join(tmp, f"{name}.pem")
            ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(certs[name])

        def tls(name: str) -> SSLConfig:
            return SSLConfig(
                None, certs[name], cert_reqs=ssl.CERT_REQUIRED, ca_certs=ca_path, bind_ident=True
            )

        say("   Mutual TLS: each side checks the other's certificate, and a peer may only")
        say("   use the identifier its certificate names.\n")
        passed += 1

        say("2. bob listens, alice connects; they exchange messages over mutual TLS.")
        bob = Peer("bob")
        alice = Peer("alice")
        peers += [bob, alice]
        got: dict[str, list[Message]] = {"alice": [], "bob": []}
        events: dict[str, threading.Event] = {k: threading.Event() for k in got}

        def receiver(name: str) -> Callable[[str, str, Message], None]:
            def on_recv(conn_id: str, ident: str, message: Message) -> None:
                got[name].append(message)
                events[name].set()

            return on_recv

        bob.messaging.on_message_recv.add(receiver("bob"))
        alice.messaging.on_message_recv.add(receiver("alice"))
        bob_addr = bob.listen(("127.0.0.1", 0), tls("bob"))
        bob.start()
        alice.connect(bob_addr, tls("alice"))
        alice.start()
        alice.messaging.send_message("bob", Message(b"hello bob", ttl=60))
        _wait(events["bob"], "bob receiving alice's message")
        bob.messaging.send_message("alice", Message(b"hello alice", ttl=60))
        _wait(events["alice"], "alice receiving bob's reply")
        say(f"   bob   got {got['bob'][0].data!r} from alice")
        say(f"   alice got {got['alice'][0].data!r} from bob\n")
        passed += 1

        say("3. carol queues a persistent message while bob is unreachable, and is killed")
        say("   with SIGKILL; restarted on the same storage file, she delivers it.")
        storage = os.path.join(tmp, "carol.db")
        cert_args = ["--tls-cert", certs["carol"], "--tls-ca", ca_path, "--tls-bind-ident"]
        base = [sys.executable, "-m", "snakemq", "send", "--ident", "carol", "--to", "bob"]
        first = subprocess.Popen(
            [
                *base,
                "--connect",
                f"127.0.0.1:{_free_port()}",
                "--persistent",
                "--storage",
                storage,
                "--ttl",
                "600",
                "--timeout",
                "60",
                *cert_args,
                "survived a kill -9",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(first)
        assert first.stderr is not None
        line = first.stderr.readline()
        if "queued 1 message" not in line:
            raise StepFailed(f"carol did not queue her message: {line.strip()!r}")
        first.send_signal(signal.SIGKILL)
        first.wait()
        say(f"   carol said {line.strip()[2:]!r} and was killed (exit {first.returncode})")
        from snakemq.storage.sqlite import SqliteQueuesStorage

        st = SqliteQueuesStorage(storage)
        waiting = st.load().queues.get("bob", [])
        st.close()
        if len(waiting) != 1:
            raise StepFailed(f"the storage holds {len(waiting)} messages for bob, expected 1")
        say(f"   {storage} still holds 1 message for bob")
        events["bob"].clear()
        second = subprocess.run(
            [
                *base,
                "--connect",
                f"{bob_addr[0]}:{bob_addr[1]}",
                "--storage",
                storage,
                "--timeout",
                str(STEP_TIMEOUT),
                *cert_args,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT + 10,
        )
        if second.returncode != 0:
            raise StepFailed(f"restarted carol failed: {second.stderr.strip()}")
        _wait(events["bob"], "bob receiving carol's stored message")
        if got["bob"][-1].data != b"survived a kill -9":
            raise StepFailed(f"bob got {got['bob'][-1].data!r} instead of carol's message")
        say(f"   restarted carol delivered it; bob got {got['bob'][-1].data!r}\n")
        passed += 1

        say("4. alice sends dave (never connected) a message with a 1 s TTL: it is dropped.")
        dropped = threading.Event()
        alice.messaging.on_message_drop.add(lambda ident, uuid: dropped.set())
        start = time.monotonic()
        alice.messaging.send_message("dave", Message(b"too late", ttl=1))
        _wait(dropped, "the TTL drop")
        say(f"   on_message_drop fired after {time.monotonic() - start:.1f} s\n")
        passed += 1

        count = 20_000
        say(f"5. Throughput: alice sends bob {count:,} messages of 100 B over the TLS link.")
        done = threading.Event()
        before = len(got["bob"])

        def on_bulk(conn_id: str, ident: str, message: Message) -> None:
            if len(got["bob"]) - before >= count:
                done.set()

        bob.messaging.on_message_recv.add(on_bulk)
        payload = b"x" * 100
        start = time.perf_counter()
        for _ in range(count):
            alice.messaging.send_message("bob", Message(payload, ttl=60))
        _wait(done, f"bob receiving {count} messages", 120)
        elapsed = time.perf_counter() - start
        say(f"   {count:,} messages in {elapsed:.2f} s: {count / elapsed:,.0f} msg/s")
        say("   (sender and receiver share this one process; `snakemq bench` uses two)\n")
        passed += 1
    except StepFailed as exc:
        say(f"   FAILED: {exc}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        for peer in peers:
            peer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{passed}/{steps} steps did what they said.")
    return EXIT_OK if passed == steps else EXIT_FAILED
