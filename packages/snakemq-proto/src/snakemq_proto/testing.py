"""Real resources for tests (yours and ours): a throwaway PostgreSQL server,
a small file system that can fill up, the bytes of a raw capable peer, a
stored backlog and a child process that reports its memory.

``TestPostgres(directory)`` runs a real PostgreSQL on 127.0.0.1 with a
password (``scram-sha-256``), so URLs with wrong credentials are refused as
in production.  Binaries come from the ``pgserver`` wheel (CPython
3.10-3.12: ``pip install pgserver``), else from a PostgreSQL installed on
the machine (``pg_config`` on PATH, or ``/usr/lib/postgresql/*/bin``).
As root the server runs as the user ``nobody`` (PostgreSQL refuses root).

``fsync`` is off: the server is never power-cut in a test, and commits stay
synchronous (a committed transaction survives the server's restart).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ._wire import (
    CAP_ACK,
    Ack,
    Capabilities,
    Identification,
    MessageFrame,
    PacketDecoder,
    ProtocolVersion,
    decode_frame,
    encode_packet,
)

__all__ = [
    "CHILD_RSS",
    "MeasuredChild",
    "TestPostgres",
    "acked",
    "capable_peer_bytes",
    "cut_holder_and_take_over",
    "postgres_bin_dir",
    "postgres_fixtures",
    "remount_read_only",
    "small_fs",
    "store_backlog",
]

PASSWORD = "snakemq-test-pw"


def postgres_bin_dir() -> Path:
    """The directory of the ``postgres`` and ``initdb`` binaries to use.

    Raises:
        RuntimeError: none was found (says how to get one).
    """
    # found, not imported: importing pgserver starts its own machinery
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "pginstall" / "bin"
        if (path / "postgres").exists():
            return path
    config = shutil.which("pg_config")
    if config:
        out = subprocess.run([config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists():
            return path
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    raise RuntimeError(
        "no PostgreSQL binaries: pip install pgserver (CPython 3.10-3.12) or install "
        "PostgreSQL (apt-get install postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestPostgres:
    """A PostgreSQL server in ``directory`` (created), started by ``start()``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.sockets = self.directory / "sock"
        self.bin = postgres_bin_dir()
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user: dict[str, Any] = {}
        self._databases = 0
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._user = {"user": nobody.pw_uid, "group": nobody.pw_gid}
            self._allow_bin()
        self._init()

    def _allow_bin(self) -> None:
        # pgserver's binaries in a venv under /root: let the server's user run them
        if str(self.bin).startswith("/usr/"):
            return
        install = self.bin.parent
        for parent in install.parents:
            with contextlib.suppress(OSError):
                parent.chmod(parent.stat().st_mode | 0o001)
        for root, dirs, files in os.walk(install):
            for name in dirs:
                path = os.path.join(root, name)
                os.chmod(path, os.stat(path).st_mode | 0o005)
            for name in files:
                path = os.path.join(root, name)
                os.chmod(path, os.stat(path).st_mode | 0o004)

    def _own(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user["user"], self._user["group"])

    def _init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        for parent in self.directory.parents:  # the server's user must reach its data
            if parent == Path("/"):
                break
            with contextlib.suppress(OSError):
                parent.chmod(parent.stat().st_mode | 0o001)
        self.sockets.mkdir(exist_ok=True)
        self._own(self.sockets)
        pwfile = self.directory / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._own(self.data)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.directory,
            **self._user,
        )

    def url(
        self, *, user: str = "postgres", password: str = PASSWORD, database: str = "postgres"
    ) -> str:
        """A ``postgresql://`` URL of this server."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres password={PASSWORD} dbname=postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type,unused-ignore]
        return self.url(database=name)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: it exited or did not get ready in ``timeout`` s.
        """
        log = open(self.directory / "log", "ab")  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=log,
                cwd=self.directory,
                **self._user,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL exited with {self.process.returncode}: "
                    + (self.directory / "log").read_text(errors="replace")[-2000:]
                )
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready on port {self.port} in {timeout} s")
            time.sleep(0.05)  # polling a server that has no event to wait on

    def stop(self, *, fast: bool = True, timeout: float = 30.0) -> None:
        """Stop the server: fast shutdown (disconnects every client), or
        SIGKILL with ``fast=False``."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT if fast else signal.SIGKILL)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not fast:  # the killed postmaster's children go away on their own
            pid = self.data / "postmaster.pid"
            with contextlib.suppress(FileNotFoundError):
                pid.unlink()

    def restart(self) -> None:
        """Fast shutdown, then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> TestPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cut_holder_and_take_over(url: str, ident: str) -> Any:
    """End the database session of the process that serves ``ident`` (as a
    cut connection would) and take its lease, as another process would; return
    the psycopg connection that holds it now (close it to release it).

    Both happen in one statement: the lock is queued before the old session
    is gone, so the old holder cannot take it back when it reconnects."""
    import psycopg

    from ._sqla import lease_key

    conn = psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    )
    row = conn.execute(
        "SELECT pg_terminate_backend(l.pid), pg_advisory_lock(%s) FROM pg_locks l "
        "JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' "
        "AND l.objid = (%s::bigint & 4294967295)::oid "
        "AND d.datname = current_database() AND l.pid <> pg_backend_pid()",
        (lease_key(ident), lease_key(ident)),
    ).fetchone()
    if row is None or row[0] is not True:
        conn.close()
        raise RuntimeError(f"no session holds the lease of {ident!r} on {url}")
    return conn


def postgres_fixtures() -> tuple[Any, Any]:
    """pytest fixtures ``postgres`` (one server per session) and ``pg_url``
    (a new empty database per test); in a conftest:
    ``postgres, pg_url = postgres_fixtures()``."""
    import pytest

    @pytest.fixture(scope="session")
    def postgres() -> Iterator[TestPostgres]:
        """A real PostgreSQL server, started once for the session."""
        # not under pytest's basetemp: another pytest session resets its
        # parent to mode 0700, which would lock the server's user out
        directory = tempfile.mkdtemp(prefix="snakemq-pg-")
        try:
            with TestPostgres(directory) as server:
                yield server
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @pytest.fixture
    def pg_url(postgres: TestPostgres) -> str:
        """The URL of a new, empty database on the session's server."""
        return postgres.new_database()

    return postgres, pg_url


@contextlib.contextmanager
def small_fs(size: str = "2m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (``mount -o size=``), unmounted at exit: a
    real disk that fills up, for storage tests.

    Mounting needs root (CI runs as root).  Without it the test fails loudly: a
    full disk or a read-only mount cannot be faked honestly.
    """
    where = Path(tempfile.mkdtemp(prefix="snakemq-smallfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        os.rmdir(where)
        raise AssertionError(
            f"this test needs a real small file system and could not mount a tmpfs "
            f"(run it as root): {done.stderr.strip()}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        os.rmdir(where)


def remount_read_only(where: Path) -> None:
    """Remount a ``small_fs`` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def capable_peer_bytes(ident: str, uuids: Iterable[bytes], window: int = 16) -> bytes:
    """What a raw capable peer ``ident`` writes to say hello and send one
    message per uuid (its payload the uuid, TTL infinite)."""
    hello = (ProtocolVersion(), Capabilities(CAP_ACK, window), Identification(ident))
    out = b"".join(encode_packet(frame.encode()) for frame in hello)
    return out + b"".join(encode_packet(MessageFrame(u, None, 0, u).encode()) for u in uuids)


def acked(decoder: PacketDecoder, data: bytes, uuid: bytes) -> bool:
    """Feed ``data`` read from the other side to ``decoder``: whether an ACK
    up to ``uuid`` came."""
    frames = (decode_frame(packet) for packet in decoder.feed(data))
    return any(isinstance(f, Ack) and f.last_uuid == uuid for f in frames)


def store_backlog(path: str | os.PathLike[str], ident: str, count: int, ttl: float | None) -> None:
    """Store ``count`` persistent 100-byte messages for ``ident`` in the
    SQLite file ``path``: message ``i`` starts with ``b"%06d" % i``."""
    from ._message import FLAG_PERSISTENT, Message
    from ._sqlite import SqliteQueuesStorage
    from ._storage import StorageBatch

    with SqliteQueuesStorage(path) as storage:
        for start in range(0, count, 50_000):
            storage.apply(
                StorageBatch(
                    push=[
                        (ident, Message(b"%06d" % i + b"x" * 94, ttl=ttl, flags=FLAG_PERSISTENT))
                        for i in range(start, min(count, start + 50_000))
                    ]
                )
            )


CHILD_RSS = """
import os

def rss():  # resident bytes, from /proc/self/statm
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak_rss():  # the high-water mark, from /proc/self/status
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
"""
"""Source of ``rss()`` and ``peak_rss()`` (bytes, Linux ``/proc``) that
``MeasuredChild`` puts before its script."""


class MeasuredChild:
    """A Python script run as a child process that reports lines of words
    on its stdout (e.g. memory figures from ``rss()``/``peak_rss()``, see
    ``CHILD_RSS``, which is put before the script); killed and reaped when
    the ``with`` block ends.

    Args:
        path: where to write the script.
        script: the script's source (``CHILD_RSS`` is prepended).
        args: its command-line arguments.

    ``line(prefix, wait)`` is blocking: from async code, call it through
    ``anyio.to_thread.run_sync``.
    """

    def __init__(self, path: str | os.PathLike[str], script: str, *args: str) -> None:
        Path(path).write_text(CHILD_RSS + script)
        self.process = subprocess.Popen(
            [sys.executable, str(path), *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def line(self, prefix: str, wait: float) -> list[str]:
        """The words of the next line that starts with ``prefix``, read
        within ``wait`` seconds (else the child is killed and this raises
        ``AssertionError`` with the last lines it printed)."""
        stdout = self.process.stdout
        assert stdout is not None
        seen: list[str] = []
        timer = threading.Timer(wait, self.process.kill)
        timer.start()
        try:
            for line in stdout:
                seen.append(line.strip())
                if line.startswith(prefix):
                    return line.split()
        finally:
            timer.cancel()
        raise AssertionError(f"the child ended without a {prefix!r} line; got {seen[-5:]}")

    def wait(self, timeout: float) -> int:
        """Its exit status, within ``timeout`` seconds."""
        return self.process.wait(timeout)

    def __enter__(self) -> MeasuredChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
