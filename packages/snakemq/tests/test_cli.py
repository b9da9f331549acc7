"""The ``snakemq`` command end to end, as subprocesses on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from snakemq._cli_peer import parse_address

CLI = [sys.executable, "-m", "snakemq"]
TIMEOUT = 60


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


class Listener:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "listen", "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        self.address = line.split()[-1]

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.kill()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    paths = {"ca": str(d / "ca.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    for name in ("alice", "bob"):
        paths[name] = str(d / f"{name}.pem")
        ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(paths[name])
    return paths


def test_listen_and_send_over_tcp(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--json", "--count", "3")
    listeners.append(bob)
    sent = run("send", "--ident", "alice", "--connect", bob.address, "--to", "bob", "one", "two")
    assert sent.returncode == 0, sent.stderr
    assert "2 message(s) acknowledged by bob" in sent.stderr
    sent = run("send", "--ident", "alice", "--connect", bob.address, "--to", "bob", stdin="three\n")
    assert sent.returncode == 0, sent.stderr
    code, out, _ = bob.finish()
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["data"] for r in records] == ["one", "two", "three"]
    assert all(r["from"] == "alice" and len(r["uuid"]) == 32 for r in records)


def test_listen_and_send_over_mutual_tls(listeners: list[Listener], certs: dict[str, str]) -> None:
    tls = ["--tls-ca", certs["ca"], "--tls-bind-ident"]
    bob = Listener("--ident", "bob", "--count", "1", "--tls-cert", certs["bob"], *tls)
    listeners.append(bob)
    sent = run(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bob",
        "--tls-cert", certs["alice"], *tls, "over tls",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    code, out, _ = bob.finish()
    assert code == 0
    assert out.startswith("alice ") and out.rstrip().endswith("over tls")


def test_spoofed_identifier_is_refused_over_tls(
    listeners: list[Listener], certs: dict[str, str]
) -> None:
    tls = ["--tls-ca", certs["ca"], "--tls-bind-ident"]
    bob = Listener("--ident", "bob", "--count", "1", "--tls-cert", certs["bob"], *tls)
    listeners.append(bob)
    sent = run(
        "send", "--ident", "mallory", "--connect", bob.address, "--to", "bob", "--timeout", "1",
        "--tls-cert", certs["alice"], *tls, "spoofed",
    )  # fmt: skip
    assert sent.returncode == 2
    assert "not acknowledged by bob" in sent.stderr


def test_send_times_out_with_a_clear_reason() -> None:
    sent = run(
        "send",
        "--ident",
        "alice",
        "--connect",
        "127.0.0.1:9",
        "--to",
        "bob",
        "--timeout",
        "0.5",
        "x",
    )
    assert sent.returncode == 2
    assert "not acknowledged by bob within 0.5 s" in sent.stderr
    assert "127.0.0.1:9" in sent.stderr


def test_send_reports_a_ttl_drop() -> None:
    sent = run(
        "send", "--ident", "alice", "--connect", "127.0.0.1:9", "--to", "bob", "--ttl", "0.2", "x"
    )
    assert sent.returncode == 1
    assert "dropped" in sent.stderr and "TTL" in sent.stderr


def test_persistent_queue_is_inspected_purged_and_delivered(
    listeners: list[Listener], tmp_path: Path
) -> None:
    db = str(tmp_path / "alice.db")
    sent = run(
        "send", "--ident", "alice", "--connect", "127.0.0.1:9", "--to", "bob", "--ttl", "600",
        "--persistent", "--storage", db, "--timeout", "0.3", "kept", "also kept",
    )  # fmt: skip
    assert sent.returncode == 2
    assert "stay queued" in sent.stderr
    shown = run("queues", db)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("bob"))
    assert row.split()[1:3] == ["2", str(len("kept") + len("also kept"))]
    bob = Listener("--ident", "bob", "--count", "2")
    listeners.append(bob)
    flushed = run(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bob", "--storage", db
    )
    assert flushed.returncode == 0, flushed.stderr
    _, out, _ = bob.finish()
    assert [line.split(" ", 3)[3] for line in out.splitlines()] == ["kept", "also kept"]
    assert "no queued messages" in run("queues", db).stdout


def test_purge(tmp_path: Path) -> None:
    db = str(tmp_path / "alice.db")
    run(
        "send", "--ident", "alice", "--connect", "127.0.0.1:9", "--to", "bob", "--ttl", "600",
        "--persistent", "--storage", db, "--timeout", "0.2", "x",
    )  # fmt: skip
    purged = run("queues", db, "--purge", "bob")
    assert purged.returncode == 0
    assert "purged 1 message(s) queued for bob" in purged.stdout
    assert "no queued messages" in run("queues", db).stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["listen", "--ident", "bob", "--listen", "host:port"], "not [HOST:]PORT"),
        (
            ["send", "--ident", "a", "--to", "b", "--persistent", "x"],
            "--persistent needs --storage",
        ),
        (["send", "--ident", "a", "--to", "b", "--tls-cert", "/no/such.pem", "x"], "no such file"),
        (["queues", "/no/such.db"], "does not exist"),
    ],
)
def test_usage_errors_name_the_fix(args: list[str], expected: str) -> None:
    result = run(*args)
    assert result.returncode == 64
    assert expected in result.stderr


def test_port_in_use_is_explained(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob")
    listeners.append(bob)
    result = run("listen", "--ident", "bob2", "--listen", bob.address, "--timeout", "1")
    assert result.returncode == 64
    assert "is in use" in result.stderr


def test_locked_storage_is_explained(listeners: list[Listener], tmp_path: Path) -> None:
    db = str(tmp_path / "bob.db")
    bob = Listener("--ident", "bob", "--storage", db)
    listeners.append(bob)
    result = run("queues", db)
    assert result.returncode == 64
    assert "lock" in result.stderr


@pytest.mark.parametrize("command", ["listen", "send", "queues", "bench", "demo"])
def test_every_subcommand_has_help_with_examples(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout


def test_parse_address() -> None:
    assert parse_address("[::1]:4000") == ("::1", 4000)
    assert parse_address("4000", what="--listen") == ("", 4000)


def test_bench_runs() -> None:
    result = run("bench", "--count", "2000")
    assert result.returncode == 0, result.stderr
    assert "msg/s" in result.stdout


def test_demo_exits_zero() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5/5 steps did what they said." in result.stdout


def run_bytes(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=TIMEOUT)


def test_send_takes_non_utf8_stdin_and_loses_no_line(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--json", "--count", "3")
    listeners.append(bob)
    sent = run_bytes(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bob",
        stdin=b"first\n\xff\xfe latin-1 \xe9\nlast",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert b"3 message(s) acknowledged by bob" in sent.stderr
    _, out, _ = bob.finish()
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["data"] == "first"
    assert base64.b64decode(records[1]["data_base64"]) == b"\xff\xfe latin-1 \xe9"
    assert records[2]["data"] == "last"


def test_send_sends_each_stdin_line_as_it_arrives(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--raw")
    listeners.append(bob)
    sender = subprocess.Popen(
        [*CLI, "send", "--ident", "alice", "--connect", bob.address, "--to", "bob"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert sender.stdin is not None and bob.proc.stdout is not None
        for line in (b"one\n", b"two\n"):
            sender.stdin.write(line)
            sender.stdin.flush()
            # arrives while the sender's standard input is still open
            assert bob.proc.stdout.readline() == line.decode()
        sender.stdin.close()
        assert sender.wait(TIMEOUT) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait(TIMEOUT)
        for stream in (sender.stdin, sender.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def test_send_file_and_raw_stdin_are_binary_messages(
    listeners: list[Listener], tmp_path: Path
) -> None:
    blob = bytes(range(256)) * 4 + b"\n\n"
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    bob = Listener("--ident", "bob", "--json", "--count", "2")
    listeners.append(bob)
    target = ["--ident", "alice", "--connect", bob.address, "--to", "bob"]
    assert run("send", *target, "--file", str(path)).returncode == 0
    assert run_bytes("send", *target, "--raw", stdin=blob).returncode == 0
    _, out, _ = bob.finish()
    assert [base64.b64decode(json.loads(r)["data_base64"]) for r in out.splitlines()] == [blob] * 2


def test_send_count_and_interval(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--raw", "--count", "3")
    listeners.append(bob)
    sent = run(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bob",
        "--count", "3", "--interval", "0.05", "tick",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert bob.finish()[1] == "tick\ntick\ntick\n"


def test_listen_that_dials_and_send_that_listens(listeners: list[Listener]) -> None:
    alice = subprocess.Popen(
        [*CLI, "send", "--ident", "alice", "--listen", "127.0.0.1:0", "--to", "bob", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert alice.stderr is not None
        line = alice.stderr.readline()
        assert "alice listening on" in line, line
        bob = run("listen", "--ident", "bob", "--connect", line.split()[-1], "--count", "1")
        assert bob.returncode == 0, bob.stderr
        assert bob.stdout.split(" ", 3)[::3] == ["alice", "hi\n"]
        assert alice.wait(TIMEOUT) == 0
    finally:
        if alice.poll() is None:
            alice.kill()
        alice.communicate()


def test_verbose_logs_through_the_snakemq_loggers(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--count", "1")
    listeners.append(bob)
    sent = run("send", "-v", "--ident", "alice", "--connect", bob.address, "--to", "bob", "x")
    assert sent.returncode == 0, sent.stderr
    assert " snakemq.link INFO " in sent.stderr


def test_queues_json(tmp_path: Path) -> None:
    db = str(tmp_path / "alice.db")
    run(
        "send", "--ident", "alice", "--connect", "127.0.0.1:9", "--to", "bob", "--ttl", "600",
        "--persistent", "--storage", db, "--timeout", "0.2", "abc", "de",
    )  # fmt: skip
    shown = run("queues", db, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [
        {"peer": "bob", "messages": 2, "bytes": 5, "soonest_ttl": 600.0}
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "--count", "0"], "--count: '0': give 1 or more"),
        (["bench", "--size", "-1"], "--size: '-1': give 0 or more"),
        (["send", "--ident", "a"], "required: --to"),
        (["nosuchcommand"], "invalid choice"),
        (["listen", "--ident", "a"], "give --listen"),
        (["send", "--ident", "a", "--to", "b", "--file", "/no/such.bin"], "no such file"),
    ],
)
def test_usage_errors_exit_64_not_the_timeout_code(args: list[str], expected: str) -> None:
    result = run(*args)
    assert result.returncode == 64, result.stderr
    assert expected in result.stderr


def test_version() -> None:
    import snakemq

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"snakemq {snakemq.__version__} (snakemq-proto ")


def test_undelivered_names_the_peer_that_answered_instead(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob")
    listeners.append(bob)
    sent = run(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bobby", "--timeout", "1", "x"
    )
    assert sent.returncode == 2
    assert f"connected to {bob.address}, which identified as 'bob', not 'bobby'" in sent.stderr


def test_undelivered_to_a_tls_listener_suggests_tls(
    listeners: list[Listener], certs: dict[str, str]
) -> None:
    bob = Listener("--ident", "bob", "--tls-cert", certs["bob"])
    listeners.append(bob)
    sent = run(
        "send", "--ident", "alice", "--connect", bob.address, "--to", "bob", "--timeout", "1", "x"
    )
    assert sent.returncode == 2
    assert "closed before the peer identified: if it listens with TLS, give --tls-cert" in (
        sent.stderr
    )


def test_undelivered_with_nothing_listening() -> None:
    sent = run(
        "send",
        "--ident",
        "alice",
        "--connect",
        "127.0.0.1:9",
        "--to",
        "bob",
        "--timeout",
        "0.5",
        "x",
    )
    assert "no connection could be made" in sent.stderr


def test_send_to_own_identifier_is_a_usage_error() -> None:
    result = run("send", "--ident", "alice", "--to", "alice", "x")
    assert result.returncode == 64
    assert "this peer's own identifier" in result.stderr


def test_listen_exits_quietly_when_its_reader_leaves(listeners: list[Listener]) -> None:
    bob = Listener("--ident", "bob", "--raw")
    listeners.append(bob)
    target = ["--ident", "alice", "--connect", bob.address, "--to", "bob"]
    assert run("send", *target, "first").returncode == 0
    assert bob.proc.stdout is not None
    assert bob.proc.stdout.readline() == "first\n"
    bob.proc.stdout.close()  # as `snakemq listen | head -1` does
    run("send", *target, "--timeout", "5", "second")
    assert bob.proc.wait(TIMEOUT) == 0
    assert bob.proc.stderr is not None
    assert "Traceback" not in bob.proc.stderr.read()
