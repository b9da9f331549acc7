"""Every script in examples/ runs as written: real processes, real sockets on
127.0.0.1, bounded in time, every process killed at the end.

``SNAKEMQ_EXAMPLES_PYTHON`` names the interpreter that runs the scripts (by
default this one); ``tox -e package`` points it at a fresh virtualenv that has
the built wheels installed, so the examples also check the wheels.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

HERE = Path(__file__).resolve().parent
PYTHON = os.environ.get("SNAKEMQ_EXAMPLES_PYTHON", sys.executable)
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Script:
    """One example script as a subprocess; its output lines are read in a thread."""

    def __init__(self, cwd: Path, env: dict[str, str], script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(HERE / script), *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, into: list[str], announce: bool) -> None:
        assert stream is not None
        for line in stream:
            into.append(line)
            if announce:
                self.lines.put(line)

    def expect(self, text: str) -> str:
        """Wait for an output line that contains ``text``."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} within {WAIT} s; stdout {self.stdout}, "
                    f"stderr {self.stderr}"
                ) from None
            if text in line:
                return line

    def finish(self) -> tuple[int, str, str]:
        code = self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        return code, "".join(self.stdout), "".join(self.stderr)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


Start = Callable[..., Script]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Start]:
    started: list[Script] = []

    def start(script: str, *args: str, **env: str) -> Script:
        s = Script(tmp_path, env, script, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def ok(script: Script) -> str:
    code, out, err = script.finish()
    assert code == 0, (out, err)
    return out


def test_tutorial_bob_alice_jack(run: Start) -> None:
    ports = {"BOB_PORT": str(free_port()), "JACK_PORT": str(free_port())}
    alice = run("tutorial/alice.py", **ports)
    bob = run("tutorial/bob.py", **ports)
    jack = run("tutorial/jack.py", **ports)
    assert "bob got b'hello bob' from alice" in ok(bob)
    assert "jack got b'hello jack' from alice" in ok(jack)
    out = ok(alice)
    assert "bob acknowledged the message" in out
    assert "jack acknowledged the message" in out


def test_persistent_queue_survives_kill_9(run: Start, tmp_path: Path) -> None:
    port = str(free_port())
    sender = run("persistent.py", "send", PORT=port)
    sender.expect("alice stored 3 messages for bob")
    sender.kill(signal.SIGKILL)
    assert sender.proc.returncode == -signal.SIGKILL
    bob = run("persistent.py", "receive", PORT=port)
    bob.expect("bob listening")
    resumed = run("persistent.py", "resume", PORT=port)
    out = ok(resumed)
    assert "alice reloaded 3 messages for bob" in out
    assert "bob acknowledged everything" in out
    got = [line for line in ok(bob).splitlines() if line.startswith("bob got")]
    assert got == [f"bob got message {i} from alice" for i in (1, 2, 3)]


def test_tls_identity_binding(run: Start) -> None:
    port = str(free_port())
    assert "wrote certs/ca.pem" in ok(run("tls_identity.py", "certs"))
    bob = run("tls_identity.py", "bob", PORT=port)
    bob.expect("bob listening")
    mallory = run("tls_identity.py", "mallory", PORT=port)
    assert "mallory: not delivered" in ok(mallory)
    bob.expect("bob refused a connection: remote peer identified as 'alice'")
    alice = run("tls_identity.py", "alice", PORT=port)
    assert "alice: bob acknowledged the message" in ok(alice)
    assert "bob got hello from alice from alice (certificate names ['alice'])" in ok(bob)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_peers(run: Start, backend: str) -> None:
    port = str(free_port())
    flag = ["--trio"] if backend == "trio" else []
    alice = run("async_peers.py", "alice", *flag, PORT=port)
    bob = run("async_peers.py", "bob", *flag, PORT=port)
    assert "bob got hello bob from alice" in ok(bob)
    out = ok(alice)
    assert "alice: bob took the message" in out
    assert "alice got hello alice from bob" in out


def test_rpc(run: Start) -> None:
    port = str(free_port())
    client = run("rpc.py", "client", PORT=port)
    server = run("rpc.py", "server", PORT=port)
    out = ok(client)
    assert "add(2, 3) = 5" in out
    assert "divide(1, 0) raised ZeroDivisionError: division by zero" in out
    ok(server)


def readme_blocks() -> list[str]:
    text = (HERE.parent / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_alice_block_talks_to_the_tutorial_peers(run: Start, tmp_path: Path) -> None:
    (alice_block,) = [b for b in readme_blocks() if 'Messaging("alice", "", ' in b]
    ports = {"BOB_PORT": str(free_port()), "JACK_PORT": str(free_port())}
    code = alice_block.replace("4000", ports["BOB_PORT"]).replace("4001", ports["JACK_PORT"])
    (tmp_path / "readme_alice.py").write_text(code)
    alice = Script(tmp_path, {}, str(tmp_path / "readme_alice.py"))
    try:
        bob = run("tutorial/bob.py", **ports)
        jack = run("tutorial/jack.py", **ports)
        out = ok(alice)
        assert "bob acknowledged the message" in out and "jack acknowledged" in out
        ok(bob)
        ok(jack)
    finally:
        alice.kill()


def test_readme_async_block_runs_as_two_peers(tmp_path: Path) -> None:
    (block,) = [b for b in readme_blocks() if "snakemq_anyio" in b]
    (tmp_path / "peers.py").write_text(block.replace("4030", str(free_port())))
    alice = Script(tmp_path, {}, str(tmp_path / "peers.py"), "alice")
    bob = Script(tmp_path, {}, str(tmp_path / "peers.py"), "bob")
    try:
        ok(bob)
        ok(alice)
    finally:
        alice.kill()
        bob.kill()
