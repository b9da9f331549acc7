"""The suite's side of the line protocol: peer processes, certificates, the matrix.

Each peer is a driver program (``drivers/*_peer.py``) in its own process,
controlled over JSON lines on stdin/stdout (see ``README.md``).  ``Peer`` wraps
one such process; ``PeerLauncher`` starts them and guarantees that every
process is killed at the end of the test, whatever happened.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
LEGACY_VENV = HERE / ".venv16"
RESULTS = HERE / "results"

SYNC = "sync"
ANYIO_ASYNCIO = "anyio-asyncio"
ANYIO_TRIO = "anyio-trio"
LEGACY = "legacy-1.6"
IMPLS: tuple[str, ...] = (SYNC, ANYIO_ASYNCIO, ANYIO_TRIO, LEGACY)
OURS: frozenset[str] = frozenset({SYNC, ANYIO_ASYNCIO, ANYIO_TRIO})

# Seconds a driver may take to answer a command (beyond its own wait timeout).
ANSWER_SLACK = 30.0


class PeerError(AssertionError):
    """A driver answered ``ok: false``, died, or did not answer in time."""


# ---------------------------------------------------------------- the legacy venv


def legacy_python() -> Path:
    """Python of the snakeMQ 1.6 virtualenv, creating it on first use.

    It is cached in ``conformance/.venv16``.  ``SNAKEMQ16_PYTHON`` points the
    suite at another interpreter that has snakeMQ 1.6 installed.
    """
    override = os.environ.get("SNAKEMQ16_PYTHON")
    if override:
        return Path(override)
    python = LEGACY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import snakemq.version as v; assert v.VERSION == '1.6', v.VERSION"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    base = _python311()
    if LEGACY_VENV.exists():
        shutil.rmtree(LEGACY_VENV)
    _run([base, "-m", "venv", str(LEGACY_VENV)])
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "snakeMQ==1.6",
        ]
    )
    _run(probe)
    return python


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise RuntimeError(
            "snakeMQ 1.6 needs Python 3.11 (ssl.wrap_socket is gone in 3.12) and no python3.11 "
            "is on PATH; install it or set SNAKEMQ16_PYTHON to a Python with snakeMQ==1.6"
        )
    return found


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


# ------------------------------------------------------------------ certificates


class Certs:
    """PEM files made by trustme: a CA and one certificate per identifier
    (named by its DNS SAN and CN, which identity binding checks), a second CA
    for the wrong-CA rows, and an expired certificate."""

    def __init__(self, directory: Path) -> None:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._good, other = trustme.CA(), trustme.CA()
        self.ca = str(directory / "ca.pem")
        self._good.cert_pem.write_to_path(self.ca)
        self.other_ca = str(directory / "other-ca.pem")
        other.cert_pem.write_to_path(self.other_ca)
        self.files: dict[str, str] = {}
        self._write("bad-wrongca", other.issue_cert("bad-wrongca", common_name="bad-wrongca"))
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = self._good.issue_cert(
            "bad-expired",
            common_name="bad-expired",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        )
        self._write("bad-expired", expired)

    def _write(self, name: str, leaf: Any) -> None:
        path = self.directory / f"{name}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        self.files[name] = str(path)

    def cert(self, name: str) -> str:
        """PEM file (key and chain) of ``name``, issued by the good CA on first use."""
        if name not in self.files:
            self._write(name, self._good.issue_cert(name, common_name=name))
        return self.files[name]

    def tls(self, ident: str, *, bind_ident: bool = False) -> dict[str, Any]:
        """Mutual TLS for ``ident``: its own certificate, the good CA, verify."""
        return {
            "cert": self.cert(ident),
            "key": self.cert(ident),
            "ca": self.ca,
            "verify": True,
            "bind_ident": bind_ident,
        }


# ------------------------------------------------------------------------ peers


class Peer:
    """One driver process.  ``call()`` sends a command and returns the answer."""

    def __init__(self, impl: str, name: str, argv: list[str], log_path: Path) -> None:
        self.impl = impl
        self.name = name
        self.log_path = log_path
        env = dict(os.environ)
        # dev mode (tox sets it) turns on asyncio debug mode: far too slow for
        # megabytes of traffic; the packages' own tests run in dev mode.
        env.pop("PYTHONDEVMODE", None)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(log_path.parent),
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stopped = False
        self.ident = ""
        # the greeting is read by the first request: peers launched one after
        # the other start their interpreters at the same time
        self._greeted = False

    def __repr__(self) -> str:
        return f"<{self.impl} peer {self.name} pid={self.proc.pid}>"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._answers.put(json.loads(line))
            except ValueError:
                self._answers.put({"ok": False, "error": f"garbage on stdout: {line[:200]!r}"})
        self._answers.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(
                f"{self} did not answer within {timeout} s\n{self.log_tail()}"
            ) from None
        if answer is None:
            self._answers.put(None)
            code = self.proc.wait(5)
            raise PeerError(f"{self} exited (code {code})\n{self.log_tail()}")
        return answer

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- stderr of {self} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    # -- requests

    def _greet(self) -> None:
        """Read the driver's greeting (once), failing if it did not start."""
        if self._greeted:
            return
        hello = self._next(60.0)
        if not hello.get("ok"):
            raise PeerError(f"{self} did not start: {hello}\n{self.log_tail()}")
        self._greeted = True

    def request(self, cmd: str, **args: Any) -> None:
        """Send a command without waiting for the answer (see ``answer()``)."""
        self._greet()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise PeerError(f"{self} cannot take commands: {exc}\n{self.log_tail()}") from exc

    def answer(self, timeout: float = ANSWER_SLACK, *, check: bool = True) -> dict[str, Any]:
        got = self._next(timeout)
        if check and not got.get("ok"):
            raise PeerError(f"{self}: {got}\n{self.log_tail()}")
        return got

    def call(self, cmd: str, *, check: bool = True, **args: Any) -> dict[str, Any]:
        self.request(cmd, **args)
        return self.answer(float(args.get("timeout", 0)) + ANSWER_SLACK, check=check)

    # -- the commands, typed

    def start(self, ident: str, **opts: Any) -> Peer:
        self.begin_start(ident, **opts)
        self.answer()
        return self

    def begin_start(self, ident: str, **opts: Any) -> Peer:
        """``start`` without waiting for the answer: start several peers at
        once, then ``answer()`` each."""
        self.ident = ident
        self.request("start", ident=ident, **opts)
        return self

    def listen(self, tls: dict[str, Any] | None = None, port: int = 0) -> int:
        return int(self.call("listen", host="127.0.0.1", port=port, tls=tls)["port"])

    def connect(self, port: int, tls: dict[str, Any] | None = None, **opts: Any) -> None:
        self.call("connect", host="127.0.0.1", port=port, tls=tls, **opts)

    def send(
        self,
        to: str,
        sizes: Sequence[int],
        *,
        seed: str,
        ttl: float | None = None,
        persistent: bool = False,
        start: int = 0,
    ) -> None:
        self.call(
            "send",
            to=to,
            sizes=list(sizes),
            seed=seed,
            ttl=ttl,
            persistent=persistent,
            start=start,
            timeout=120,
        )

    def wait(self, what: str, ident: str | None, count: int = 1, timeout: float = 30.0) -> int:
        """Wait until the peer saw ``count`` events; fail the test if it does not."""
        got = self.call("wait", what=what, ident=ident, count=count, timeout=timeout, check=False)
        if not got.get("ok"):
            raise PeerError(
                f"{self}: waited {timeout} s for {count} {what!r} events (ident={ident!r}), "
                f"saw {got.get('value')}: {got.get('error')}\n{self.log_tail()}"
            )
        return int(got["value"])

    def wait_progress(
        self, what: str, ident: str | None, count: int, *, stall: float = 10.0, total: float = 90.0
    ) -> int:
        """Wait for ``count`` events while they keep coming: fail once nothing new
        arrived for ``stall`` seconds (a lost message never arrives) or after ``total``."""
        deadline = time.monotonic() + total
        last = -1
        while True:
            got = self.call("wait", what=what, ident=ident, count=count, timeout=stall, check=False)
            if "value" not in got:
                raise PeerError(f"{self}: {got}")
            value = int(got["value"])
            if got["ok"]:
                return value
            if value == last or time.monotonic() > deadline:
                raise PeerError(
                    f"{self}: {value} of {count} {what!r} events (ident={ident!r}), "
                    f"nothing new for {stall} s\n{self.log_tail()}"
                )
            last = value

    def try_wait(self, what: str, ident: str | None, count: int = 1, timeout: float = 5.0) -> bool:
        """Like ``wait`` but answers whether it happened instead of failing."""
        got = self.call("wait", what=what, ident=ident, count=count, timeout=timeout, check=False)
        if "value" not in got:
            raise PeerError(f"{self}: {got}")
        return bool(got["ok"])

    def report(self) -> dict[str, Any]:
        return self.call("report")

    def rpc_setup(self, *, server: bool = False, client: bool = False, pickler: str) -> None:
        self.call("rpc_setup", server=server, client=client, pickler=pickler)

    def rpc_call(
        self,
        to: str,
        method: str,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float = 10.0,
        signal: float | None = None,
    ) -> int:
        """Start a call (in a thread of the driver); returns its number for ``rpc_result``."""
        answer = self.call(
            "rpc_call",
            to=to,
            method=method,
            args=list(args),
            kwargs=kwargs or {},
            timeout=timeout,
            signal=signal,
        )
        return int(answer["call"])

    def rpc_result(self, call: int, timeout: float) -> dict[str, Any]:
        """``returned`` (repr) or ``raised`` (type, module, message, remote_traceback)."""
        return self.call("rpc_result", call=call, timeout=timeout)

    def rpc(self, to: str, method: str, **opts: Any) -> dict[str, Any]:
        """A call and its result."""
        return self.rpc_result(self.rpc_call(to, method, **opts), opts.get("timeout", 10.0) + 10)

    def count(self, what: str, ident: str) -> int:
        return int(self.report()["counts"].get(f"{what}:{ident}", 0))

    def quit(self) -> None:
        self.call("quit")
        self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end by itself (a driver started with
        ``kill_after`` SIGKILLs itself); return its exit code, ``-9`` for a
        SIGKILL, or fail the test after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self} still runs after {timeout} s\n{self.log_tail()}") from None

    # -- signals

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


class PeerLauncher:
    """Starts driver processes for one test; ``close()`` kills every one.

    A call returns once the process is spawned; its greeting is checked by
    its first request (``Peer.start``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.peers: list[Peer] = []
        self._n = 0

    def argv(self, impl: str) -> list[str]:
        if impl == SYNC:
            return [sys.executable, str(DRIVERS / "sync_peer.py")]
        if impl in (ANYIO_ASYNCIO, ANYIO_TRIO):
            backend = impl.split("-", 1)[1]
            return [sys.executable, str(DRIVERS / "anyio_peer.py"), "--backend", backend]
        if impl == LEGACY:
            return [str(legacy_python()), str(DRIVERS / "legacy16_peer.py")]
        raise ValueError(f"unknown implementation {impl!r}")

    def __call__(self, impl: str, name: str) -> Peer:
        self._n += 1
        log_path = self.workdir / f"{self._n:02d}-{name}-{impl}.log"
        peer = Peer(impl, name, self.argv(impl), log_path)
        self.peers.append(peer)
        return peer

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.peers)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


# ------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Row:
    """One row of the matrix: scenario, sender side A, other side B, transport, role."""

    scenario: str
    a: str
    b: str
    transport: str
    role: str = ""  # "A listens" / "A connects" where the scenario has both

    @property
    def id(self) -> str:
        role = {"A listens": "-A_listens", "A connects": "-A_connects"}.get(self.role, "")
        return f"s{self.scenario}-{self.a}_to_{self.b}-{self.transport}{role}"

    @property
    def a_listens(self) -> bool:
        return self.role != "A connects"


@dataclass
class RowResult:
    row: Row
    outcome: str  # pass, FAIL, xfail, XPASS
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""


SCENARIOS: dict[str, str] = {
    "1": "one way, 1,000 mixed messages",
    "2": "both directions at once",
    "1t": "a stranger claims the identifier of a peer A dialled: refused",
    "3": "TTL while the peer is away",
    "4": "persistence across SIGKILL (5,000 queued)",
    "4m": "a snakeMQ 1.6 queue file opened after the upgrade",
    "5": "SIGKILL of the sender mid-stream",
    "5r": "SIGKILL of the receiver (own storage) mid-stream: duplicates counted",
    "4pg": "scenario 4, queues in PostgreSQL",
    "5pg": "scenario 5, queues in PostgreSQL",
    "f": "failover: holder SIGKILLed, standby takes over (PostgreSQL)",
    "6": "listener restarts, traffic resumes",
    "7": "duplicate identifier refused",
    "8": "keepalive detects a frozen peer",
    "8p": "silent partition (no FIN/RST) longer than keepalive, healed",
    "9": "TLS: wrong CA, expired cert, plain TCP",
    "9s": "TLS: spoofed identifier (identity binding)",
    "r": "RPC with pickler=pickle against 1.6: call, exception, signal",
    "rj": "RPC: the default JSON server refuses a 1.6 pickle request",
}

SYMBOL = {"pass": "ok", "FAIL": "FAIL", "xfail": "xf", "XPASS": "XPASS", "ERROR": "ERR"}


def render_matrix(results: Sequence[RowResult]) -> str:
    """Pairs x scenarios, one line per (A, B, transport); roles side by side."""
    columns: list[tuple[str, str]] = []
    for scenario in SCENARIOS:
        if scenario in ("1", "2"):
            columns += [(scenario, "A listens"), (scenario, "A connects")]
        else:
            columns.append((scenario, ""))
    cell: dict[tuple[str, str, str, str, str], str] = {}
    for r in results:
        cell[(r.row.a, r.row.b, r.row.transport, r.row.scenario, r.row.role)] = SYMBOL.get(
            r.outcome, r.outcome
        )
    heads = [f"{s}{'L' if role == 'A listens' else 'C' if role else ''}" for s, role in columns]
    width = max(5, *(len(h) for h in heads))
    lines = [
        "conformance matrix (A sends/acts, B is the other side; L/C: A listens/connects;"
        " ok pass, FAIL fail, xf expected failure, . not in the covering subset)",
        f"{'A':<14}{'B':<14}{'tr':<4} " + " ".join(h.rjust(width) for h in heads),
    ]
    for a in IMPLS:
        for b in IMPLS:
            for transport in ("tcp", "tls"):
                cells = [cell.get((a, b, transport, s, role), ".") for s, role in columns]
                if all(c == "." for c in cells):
                    continue
                lines.append(
                    f"{a:<14}{b:<14}{transport:<4} " + " ".join(c.rjust(width) for c in cells)
                )
    lines.append("scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()))
    bad = [r for r in results if r.outcome in ("FAIL", "ERROR")]
    xfailed = [r for r in results if r.outcome == "xfail"]
    xpassed = [r for r in results if r.outcome == "XPASS"]
    reasons = sorted({(r.row.scenario, r.reason) for r in xfailed + xpassed})
    if reasons:
        lines.append("expected failures (what snakeMQ 1.6 cannot do):")
        lines += [f"  s{s}: {reason}" for s, reason in reasons]
    if xpassed:
        lines.append("expected failures that passed this time (timing-dependent, not strict):")
        lines += [f"  {r.row.id}" for r in xpassed]
    if bad:
        lines.append("failing rows:")
        lines += [f"  {r.row.id}: {r.outcome} {r.message[:300]}" for r in bad]
    passed = sum(r.outcome == "pass" for r in results)
    lines.append(
        f"{passed}/{len(results)} rows passed, {len(bad)} failed, "
        f"{len(xfailed)} expected failures, {len(xpassed)} unexpectedly passed"
    )
    return "\n".join(lines)


def write_json(results: Sequence[RowResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "implementations": list(IMPLS),
        "scenarios": SCENARIOS,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": [
            {
                "id": r.row.id,
                "scenario": r.row.scenario,
                "a": r.row.a,
                "b": r.row.b,
                "transport": r.row.transport,
                "role": r.row.role,
                "outcome": r.outcome,
                "reason": r.reason,
                "seconds": round(r.seconds, 3),
                "details": r.details,
                "message": r.message,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    box = [time.monotonic()]
    yield box
    box[0] = time.monotonic() - box[0]


# ------------------------------------------------------------------ hostile network


def read_journal(path: Path) -> list[list[Any]]:
    """What a driver started with ``journal=path`` received, in order, across
    a SIGKILL (a torn last line, written as the kill came, is left out)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the part after the last newline is torn
    return [json.loads(line) for line in lines]


class _Pipe:
    """One direction of a relayed connection: bytes read from ``src`` and not
    yet written to ``dst``."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.buf = b""


class SilentRelay:
    """A TCP relay in the suite's own process, ``127.0.0.1:port`` → ``upstream``,
    that can drop the network silently: ``partition()`` stops forwarding and
    accepting without closing anything, so neither side sees a FIN or an RST —
    the bytes wait in kernel buffers, new connects wait in the accept backlog,
    like a cable pulled between two hosts.  ``heal()`` resumes; what either
    side did meanwhile (a close, a redial) reaches the other then.  No root
    needed (unlike a network namespace or iptables)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._pipes: list[_Pipe] = []
        self._forwarding = True
        self._closed = False
        self._lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, name="silent-relay", daemon=True)
        self._thread.start()

    def partition(self) -> None:
        """From now on nothing crosses, in either direction (no FIN, no RST)."""
        with self._lock:
            self._forwarding = False
        self._wake_w.send(b"x")

    def heal(self) -> None:
        with self._lock:
            self._forwarding = True
        self._wake_w.send(b"x")

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        for pipe in self._pipes:
            pipe.src.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self) -> None:
        try:
            down, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            down.close()
            return
        for sock in (down, up):
            sock.setblocking(False)
        self._pipes += [_Pipe(down, up), _Pipe(up, down)]

    def _drop(self, sock: socket.socket) -> None:
        """One end closed or failed: close both ends of its connection."""
        doomed = [p for p in self._pipes if sock in (p.src, p.dst)]
        for pipe in doomed:
            self._pipes.remove(pipe)
            pipe.src.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                forwarding = self._forwarding
            readers: list[socket.socket] = [self._wake_r]
            writers: list[socket.socket] = []
            if forwarding:
                readers.append(self._listener)
                readers += [p.src for p in self._pipes if not p.buf]
                writers += [p.dst for p in self._pipes if p.buf]
            readable, writable, _ = select.select(readers, writers, [], 1.0)
            if self._wake_r in readable:
                self._wake_r.recv(4096)
                continue  # the state may have changed: select again
            if self._listener in readable:
                self._accept()
            for pipe in list(self._pipes):
                if pipe not in self._pipes:
                    continue
                try:
                    if pipe.buf and pipe.dst in writable:
                        sent = pipe.dst.send(pipe.buf)
                        pipe.buf = pipe.buf[sent:]
                    elif not pipe.buf and pipe.src in readable:
                        data = pipe.src.recv(256 * 1024)
                        if not data:
                            self._drop(pipe.src)
                            continue
                        pipe.buf = data
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self._drop(pipe.src)
