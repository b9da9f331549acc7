"""The tutorial of README.md (the one of the issue), run snippet by snippet.

Each program below is made of the tutorial's own lines, unchanged except
for the ports 4000/4001, which become free ports so that parallel test
runs cannot collide.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme
from sync_helpers import WAIT, Recorder

README = Path(__file__).resolve().parent.parent / "README.md"


def tutorial() -> str:
    text = README.read_text()
    section = text[text.index("## Tutorial") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Snippets:
    """The tutorial split at its blank lines and role comments."""

    def __init__(self, ports: dict[str, str]) -> None:
        code = tutorial()
        for old, new in ports.items():
            code = code.replace(old, str(new))
        blocks = code.split("\n\n")
        self.preamble = blocks[0] + "\n\n" + blocks[1]  # imports; init, link, packeter, messaging
        roles = blocks[2]
        self.role = {
            name.lower(): part
            for name, part in re.findall(r"# (Bob|Alice|Jack)\n(.*?)(?=\n# |\Z)", roles, re.S)
        }
        self.loop = blocks[3]
        self.send = blocks[4]
        self.recv = blocks[5]
        self.storage = blocks[6]
        self.logging = blocks[7]
        self.tls = blocks[8]
        assert self.loop.strip() == "my_link.loop()"
        assert set(self.role) == {"bob", "alice", "jack"}


class Program:
    def __init__(self, ident: str, *snippets: str) -> None:
        self.ns: dict[str, Any] = {"MY_IDENT": ident}
        self.rec = Recorder()
        for code in snippets:
            exec(code, self.ns)
        self.thread: threading.Thread | None = None

    def run(self, code: str) -> None:
        exec(code, self.ns)

    def start_loop(self, loop_snippet: str) -> None:
        self.ns["my_link"].reconnect_interval = 0.1
        self.thread = threading.Thread(target=exec, args=(loop_snippet, self.ns), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        link = self.ns["my_link"]
        if self.thread is not None:
            link.stop()
            self.thread.join(WAIT)
            assert not self.thread.is_alive()
        link.cleanup()


@pytest.fixture
def programs() -> Any:
    made: list[Program] = []
    yield made
    for p in made:
        p.stop()


def test_tutorial_mesh_send_and_print(
    programs: list[Program], capsys: pytest.CaptureFixture[str]
) -> None:
    s = Snippets({"4000": str(free_port()), "4001": str(free_port())})
    peers = {ident: Program(ident, s.preamble, s.role[ident]) for ident in ("bob", "jack", "alice")}
    programs += peers.values()
    alice = peers["alice"]
    alice.run(s.recv)  # alice prints what she receives
    alice.ns["my_messaging"].on_message_recv.add(alice.rec.hook("recv"))
    for p in peers.values():
        p.ns["my_messaging"].on_connect.add(p.rec.hook("connect"))
        p.start_loop(s.loop)
    bob = peers["bob"]
    bob.rec.wait(lambda: {a[1] for a in bob.rec.calls.get("connect", [])} >= {"alice", "jack"})
    bob.run(s.send)  # bob -> alice: hello
    peers["jack"].run(s.send)  # jack -> alice: hello
    alice.rec.wait_count("recv", 2)
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in out) == ["bob", "jack"]
    assert all("<Message" in line for line in out)


def test_tutorial_persistent_storage(
    programs: list[Program], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = Snippets({"4000": str(free_port()), "4001": str(free_port())})
    base = s.preamble.rsplit("\n", 1)[0]  # the storage snippet replaces the plain Messaging
    assert base.endswith("my_packeter = snakemq.packeter.Packeter(my_link)")
    sender = Program("bob", base, s.storage)
    sender.run(s.send.splitlines()[1])  # my_messaging.send_message("alice", message)
    sender.stop()
    sender.ns["storage"].close()
    assert (tmp_path / "storage.db").exists()

    again = Program("bob", base, s.storage)  # restarted: the message waits in the queue
    programs.append(again)
    queued = again.ns["my_messaging"].queued("alice")
    assert [m.data for m in queued] == [b"hello"] and queued[0].ttl == 600
    alice = Program("alice", s.preamble, s.role["alice"], s.recv)
    programs.append(alice)
    alice.ns["my_messaging"].on_message_recv.add(alice.rec.hook("recv"))
    again.run(s.role["bob"])
    again.start_loop(s.loop)
    alice.start_loop(s.loop)
    alice.rec.wait_count("recv", 1)
    again.stop()
    programs.remove(again)
    again.ns["storage"].close()


def test_tutorial_logging() -> None:
    import logging

    s = Snippets({})
    ns: dict[str, Any] = {}
    logger = logging.getLogger("snakemq")
    before = logger.level
    try:
        exec(s.logging, ns)
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)


def test_tutorial_tls(
    programs: list[Program], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path("testkey.pem")
    cert.cert_chain_pems[0].write_to_path("testcert.pem")
    port = free_port()
    s = Snippets({"4000": str(port)})
    config, listen, connect = s.tls.splitlines()
    bob = Program("bob", s.preamble, config, listen)
    alice = Program("alice", s.preamble, config, connect, s.recv)
    programs += [bob, alice]
    alice.ns["my_messaging"].on_message_recv.add(alice.rec.hook("recv"))
    bob.start_loop(s.loop)
    alice.start_loop(s.loop)
    bob.run(s.send)
    alice.rec.wait_count("recv", 1)
    conn = next(iter(alice.ns["my_messaging"].connected_idents().values()))
    assert alice.ns["my_link"].getpeercert(conn) is not None
