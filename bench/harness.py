"""Side-by-side benchmark harness: our packages, snakeMQ 1.6 and pyzmq, in one run.

Theory of operation
-------------------
A *run* is one workload against one system: the harness starts the system's
receiver driver (``drivers/*_driver.py``) in its own process on 127.0.0.1, waits
for its ``READY {"port": ...}`` line, starts the sender driver in a second
process, and waits for the ``RESULT {...}`` line of the side that measures —
the receiver for throughput (first to last message received, every message
counted and its size checked), the sender for latency (round trips). Then it
reads the peak RSS (``VmHWM``) of both processes and SIGKILLs both process
groups.  Every run is bounded by a timeout; whatever happens, no driver
process outlives its run.

Runs are interleaved (repetition → workload → system), so the noise of a shared
machine spreads over all systems alike.  Each figure is the median of the
repetitions, and is also given as a ratio to snakeMQ 1.6 and to pyzmq from the
same run: absolute numbers move from run to run, ratios within a run hold.

snakeMQ 1.6 has the same import name as our sync package, so it lives in its
own virtualenv (``bench/.venv16``, Python 3.11), created on first use.

Use :func:`run` from code (``snakemq bench``), or ``python bench/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DRIVERS_DIR = BENCH_DIR / "drivers"
DEFAULT_OUT_DIR = BENCH_DIR / "results"
LEGACY_VENV = BENCH_DIR / ".venv16"
LEGACY_REQUIREMENT = "snakeMQ==1.6"
HOST = "127.0.0.1"

#: Seconds one run may take (both processes, start to result) before it is killed.
DEFAULT_TIMEOUT = 180.0
QUICK_TIMEOUT = 60.0
#: Seconds a driver may take to start listening.
READY_TIMEOUT = 30.0
#: Seconds a profiled driver may take to write its statistics.
PROFILE_DUMP_TIMEOUT = 15.0

#: Environment variables that would slow a driver down or change what it measures.
_SCRUBBED_ENV = (
    "PYTHONDEVMODE",
    "PYTHONASYNCIODEBUG",
    "PYTHONTRACEMALLOC",
    "PYTHONMALLOC",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
)


@dataclass(frozen=True)
class System:
    """One implementation under test and how to start its drivers."""

    name: str
    label: str
    driver: str
    options: dict[str, Any] = field(default_factory=dict)
    probe: str = ""
    legacy: bool = False
    tls: bool = True
    persistent: bool = True
    #: The workload modes it can run (pyzmq REQ/REP: only round trips).
    modes: tuple[str, ...] = ("throughput", "latency", "rpc", "noread", "failover")
    postgres: bool = True  # SqlAlchemyQueuesStorage (snakeMQ 1.6's needs SQLAlchemy 1)


@dataclass(frozen=True)
class Workload:
    """One shape of traffic."""

    name: str
    label: str
    mode: str  # "throughput", "latency", "rpc", "noread" or "failover"
    size: int
    count: int
    quick_count: int
    unit: str  # what the table shows: "msg/s", "MB/s", "us" or "MiB"
    tls: bool = False
    persistent: bool = False
    postgres: bool = False  # the sender's queues in PostgreSQL (a server the harness starts)
    warmup: int = 0
    quick_warmup: int = 0
    #: noread: seconds the sender may push before the memory is read.
    budget: float = 0.0
    quick_budget: float = 0.0
    #: Pin both driver processes to this CPU (round trips: without it, where the scheduler
    #: puts the two processes decides the figure on a small shared machine).
    cpu: int | None = None
    #: The workload this one's figure is also given as a ratio of, per system and
    #: from the same run (PostgreSQL / SQLite).
    versus: str = ""

    @property
    def round_trips(self) -> bool:
        """The sender measures round trips (latency, RPC calls), not the receiver throughput."""
        return self.mode in ("latency", "rpc")


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "snakemq",
            "snakemq (sync)",
            "sync_driver.py",
            probe="import snakemq.link, snakemq.packeter, snakemq.messaging, snakemq.message",
        ),
        System(
            "anyio-asyncio",
            "snakemq_anyio asyncio",
            "anyio_driver.py",
            {"backend": "asyncio"},
            probe="from snakemq_anyio import Messaging, Message, SSLConfig, SqliteQueuesStorage",
        ),
        System(
            "anyio-trio",
            "snakemq_anyio trio",
            "anyio_driver.py",
            {"backend": "trio"},
            probe="import trio\nfrom snakemq_anyio import Messaging, Message, SSLConfig, SqliteQueuesStorage",
        ),
        System(
            "snakemq-1.6",
            "snakeMQ 1.6",
            "legacy16_driver.py",
            probe="import snakemq.version\nassert snakemq.version.VERSION == '1.6', snakemq.version.VERSION",
            legacy=True,
            postgres=False,
        ),
        System(
            "zmq-pushpull",
            "pyzmq PUSH/PULL",
            "zmq_driver.py",
            {"pattern": "pushpull"},
            probe="import zmq",
            tls=False,
            persistent=False,
        ),
        System(
            "zmq-dealerrouter",
            "pyzmq DEALER/ROUTER",
            "zmq_driver.py",
            {"pattern": "dealerrouter"},
            probe="import zmq",
            tls=False,
            persistent=False,
        ),
        System(
            "zmq-reqrep",
            "pyzmq REQ/REP",
            "zmq_driver.py",
            {"pattern": "reqrep"},
            probe="import zmq",
            tls=False,
            persistent=False,
            modes=("latency", "rpc"),
        ),
    )
}

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("100B", "100 B", "throughput", 100, 200_000, 2_000, "msg/s"),
        Workload("10KiB", "10 KiB", "throughput", 10 * 1024, 20_000, 200, "MB/s"),
        Workload("1MiB", "1 MiB", "throughput", 1024 * 1024, 300, 5, "MB/s"),
        Workload("100B-tls", "100 B TLS", "throughput", 100, 200_000, 2_000, "msg/s", tls=True),
        Workload(
            "100B-persistent",
            "100 B persistent",
            "throughput",
            100,
            10_000,
            200,
            "msg/s",
            persistent=True,
        ),
        Workload(
            "100B-persistent-pg",
            "100 B persistent PostgreSQL",
            "throughput",
            100,
            10_000,
            200,
            "msg/s",
            persistent=True,
            postgres=True,
            versus="100B-persistent",
        ),
        # The sender's holder is SIGKILLed once the receiver has its messages; a
        # standby (same ident, same database, default lease_poll) takes over and
        # sends: time from the kill to its first message at the receiver.
        Workload(
            "failover-pg",
            "failover PostgreSQL",
            "failover",
            100,
            100,
            20,
            "ms",
            persistent=True,
            postgres=True,
        ),
        Workload(
            "latency",
            "round trip 100 B unpinned",
            "latency",
            100,
            5_000,
            100,
            "us",
            warmup=200,
            quick_warmup=20,
        ),
        # Both sides on one CPU (taskset -c 0 for every system): the stable figure.
        Workload(
            "latency-pinned",
            "round trip 100 B pinned",
            "latency",
            100,
            5_000,
            100,
            "us",
            warmup=200,
            quick_warmup=20,
            cpu=0,
        ),
        # One RPC call (a 100-character string echoed back) at a time, pinned as above;
        # pyzmq REQ/REP with a JSON request and reply is the reference.
        Workload(
            "rpc",
            "RPC call 100 B pinned",
            "rpc",
            100,
            3_000,
            50,
            "us",
            warmup=100,
            quick_warmup=10,
            cpu=0,
        ),
        # A receiver that never reads while the sender pushes: memory must stay bounded.
        Workload(
            "noread",
            "no reader 100 B",
            "noread",
            100,
            1_000_000,
            5_000,
            "MiB",
            budget=30.0,
            quick_budget=10.0,
        ),
    )
}

#: The systems every ratio is taken against.
REFERENCES = ("snakemq-1.6", "zmq-pushpull", "zmq-dealerrouter", "zmq-reqrep")


class RunError(Exception):
    """A run did not produce a result (crash, timeout, wrong count)."""


# --------------------------------------------------------------------------- processes


def _driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DriverProcess:
    """One driver process, its stdout read line by line on a thread."""

    _live: set[DriverProcess] = set()
    _live_lock = threading.Lock()

    def __init__(self, argv: list[str], stderr_path: Path, env: dict[str, str]) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,  # its own process group: killed as a whole
        )
        with self._live_lock:
            self._live.add(self)
        self._lines: queue.Queue[str | None] = queue.Queue()
        #: The last payload of every tagged line read so far (e.g. PROGRESS).
        self.seen: dict[str, dict[str, Any]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def expect(self, tag: str, deadline: float, what: str) -> dict[str, Any]:
        """Wait for the ``tag {...}`` line; raise RunError on exit or timeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"timed out waiting for {what}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait()
                raise RunError(f"{what}: driver exited with {code}: {self.stderr_tail()}")
            head, _, body = line.partition(" ")
            if head.isupper() and body.startswith("{"):
                payload: dict[str, Any] = json.loads(body)
                self.seen[head] = payload
                if head == tag:
                    return payload

    def check_alive(self, what: str) -> None:
        """Raise RunError if the process has already exited."""
        code = self.popen.poll()
        if code is not None:
            raise RunError(f"{what}: driver exited with {code}: {self.stderr_tail()}")

    def stderr_tail(self, lines: int = 6) -> str:
        """The last lines the driver wrote to stderr, for error messages."""
        self._stderr.flush()
        try:
            text = self.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(no stderr)"

    def peak_rss_kib(self) -> int | None:
        """Peak RSS (VmHWM) of the live process, from /proc; None if unavailable."""
        try:
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None

    def kill(self, graceful: bool = False) -> None:
        """SIGKILL the whole process group and reap it.

        ``graceful``: SIGTERM first and give it a few seconds (a profiled driver
        writes its statistics then).
        """
        if graceful and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=PROFILE_DUMP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        # The group is dead, so the pipe is at EOF: let the reader finish before closing it.
        self._reader.join(timeout=10)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()
        self._stderr.close()
        with self._live_lock:
            self._live.discard(self)

    @classmethod
    def kill_all(cls) -> None:
        """Kill every driver still running (on error, interrupt, exit)."""
        with cls._live_lock:
            live = list(cls._live)
        for proc in live:
            proc.kill()


# --------------------------------------------------------------------------- environments


def _python311() -> str | None:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which("python3.11")


def ensure_legacy_venv(venv: Path = LEGACY_VENV) -> Path:
    """Create (once) the virtualenv with snakeMQ 1.6 on Python 3.11; return its python."""
    python = venv / "bin" / "python"
    marker = venv / ".snakemq16-ok"
    if marker.exists() and python.exists():
        return python
    base = _python311()
    if base is None:
        raise RunError("snakeMQ 1.6 needs a python3.11 interpreter on PATH")
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / ".venv16.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent harness may be creating it
        if marker.exists() and python.exists():
            return python
        if venv.exists():
            shutil.rmtree(venv)
        print(f"bench: creating {venv} with {LEGACY_REQUIREMENT} ...", file=sys.stderr)
        env = _driver_env()
        env.pop("PYTHONPATH", None)
        for argv in (
            [base, "-m", "venv", str(venv)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                LEGACY_REQUIREMENT,
            ],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RunError(
                    f"creating the snakeMQ 1.6 virtualenv failed: {' '.join(argv)}: "
                    f"{(done.stderr or done.stdout).strip()[-500:]}"
                )
        marker.write_text(LEGACY_REQUIREMENT + "\n")
    return python


def _interpreter(system: System) -> str:
    if system.legacy:
        return str(ensure_legacy_venv())
    return sys.executable


def _child_env(system: System) -> dict[str, str]:
    env = _driver_env()
    if system.legacy:
        env.pop("PYTHONPATH", None)  # nothing of ours may shadow 1.6's snakemq
    return env


def probe(system: System) -> str | None:
    """None if the system can run here, else why not."""
    try:
        python = _interpreter(system)
    except RunError as exc:
        return str(exc)
    done = subprocess.run(
        [python, "-c", system.probe],
        env=_child_env(system),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"probe exited with {done.returncode}"
    return None


def make_certificates(directory: Path) -> dict[str, str]:
    """A CA and one certificate for localhost/127.0.0.1 (both sides use it: mutual TLS)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", HOST)
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- one run


def supports(system: System, workload: Workload) -> bool:
    """Whether the system has the feature the workload needs (pyzmq: no TLS, no storage)."""
    return (
        workload.mode in system.modes
        and (system.tls or not workload.tls)
        and (system.persistent or not workload.persistent)
        and (system.postgres or not workload.postgres)
    )


def run_once(
    system: System,
    workload: Workload,
    *,
    quick: bool,
    timeout: float,
    workdir: Path,
    certificates: dict[str, str] | None,
    profile_dir: Path | None = None,
    database: Any = None,
) -> dict[str, Any]:
    """Run one workload against one system; return its measurements (raises RunError).

    With ``profile_dir``, both drivers run under cProfile and leave
    ``<system>-<workload>-<role>.prof`` there (the figures are then slower).
    """
    count = workload.quick_count if quick else workload.count
    config: dict[str, Any] = {
        "host": HOST,
        "mode": workload.mode,
        "size": workload.size,
        "count": count,
        "warmup": workload.quick_warmup if quick else workload.warmup,
        "tls": certificates if workload.tls else None,
        "storage": None,
        "cpu": workload.cpu,
        # The drivers' own limit, should the harness die before it can kill them.
        "max_lifetime": timeout + 30,
        **system.options,
    }
    python = _interpreter(system)
    driver = str(DRIVERS_DIR / system.driver)

    def profile(role: str) -> dict[str, str]:
        if profile_dir is None:
            return {}
        return {"profile": str(profile_dir / f"{system.name}-{workload.name}-{role}.prof")}

    env = _child_env(system)
    tag = f"{system.name}/{workload.name}"
    procs: list[DriverProcess] = []
    started = time.monotonic()
    deadline = started + timeout
    try:
        recv = DriverProcess(
            [python, driver, json.dumps({**config, **profile("recv"), "role": "recv"})],
            workdir / "recv.stderr",
            env,
        )
        procs.append(recv)
        where = recv.expect(
            "READY", min(deadline, time.monotonic() + READY_TIMEOUT), "receiver READY"
        )
        send_config = {**config, **where, **profile("send"), "role": "send"}
        if workload.postgres:  # a fresh database of the run's server
            send_config["storage"] = database.new_database()
        elif workload.persistent:
            send_config["storage"] = str(workdir / "sender.db")
        send = DriverProcess(
            [python, driver, json.dumps(send_config)], workdir / "send.stderr", env
        )
        procs.append(send)
        measuring, other = (
            (recv, send) if workload.mode in ("throughput", "failover") else (send, recv)
        )
        if workload.mode == "failover":
            result = _await_failover(
                recv, send, send_config, [python, driver], workdir, env, procs, deadline, tag
            )
        elif workload.mode == "noread":
            budget = workload.quick_budget if quick else workload.budget
            result = _await_pushing(send, recv, min(deadline, time.monotonic() + budget), tag)
        else:
            result = _await_result(measuring, other, deadline, tag)
        rss_recv = recv.peak_rss_kib()
        rss_send = send.peak_rss_kib() or result.get("rss_send_kib")
        if measuring is recv and rss_recv is None:
            rss_recv = result.get("rss_kib")
        if measuring is send and rss_send is None:
            rss_send = result.get("rss_kib")
    finally:
        for proc in procs:
            proc.kill(graceful=profile_dir is not None)

    out: dict[str, Any] = {
        "ok": True,
        "wall_s": round(time.monotonic() - started, 3),
        "rss_send_kib": rss_send,
        "rss_recv_kib": rss_recv,
    }
    if workload.mode == "throughput":
        if result["received"] != count or result["wrong_size"]:
            raise RunError(
                f"{tag}: received {result['received']} of {count} messages, "
                f"{result['wrong_size']} of the wrong size"
            )
        elapsed = result["elapsed"]
        if elapsed <= 0:
            raise RunError(f"{tag}: all {count} messages arrived at once; raise the count")
        # First to last message received: the interval holds count - 1 arrivals.
        out["elapsed_s"] = elapsed
        out["msgs_per_s"] = (count - 1) / elapsed
        out["mb_per_s"] = (count - 1) * workload.size / elapsed / 1e6
    elif workload.mode == "failover":
        out["failover_ms"] = result["failover_ms"]
    elif workload.mode == "noread":
        out["pushed"] = result["pushed"]
        out["completed"] = result["pushed"] >= count
        out["stalled"] = bool(result.get("stalled"))
        if rss_send is None or rss_recv is None:
            raise RunError(f"{tag}: could not read the peak RSS of both sides")
        out["rss_max_mib"] = max(rss_send, rss_recv) / 1024
    else:
        if result["wrong_size"]:
            raise RunError(f"{tag}: {result['wrong_size']} echoes of the wrong size")
        out["round_trips"] = result["round_trips"]
        out["median_us"] = result["median_us"]
        out["p99_us"] = result["p99_us"]
        # The CPUs the measuring side ran on: proof that a pinned workload was pinned.
        out["cpus"] = result.get("cpus")
    return out


#: noread: a sender whose count of returned send calls has not moved for this long has
#: been pushed back (or is stuck); its memory is read then.
STALL_SECONDS = 5.0


def _await_pushing(
    send: DriverProcess, recv: DriverProcess, deadline: float, tag: str
) -> dict[str, Any]:
    # Pushing ends when everything is queued, when the system pushes back (the
    # count stops moving), or at the budget; each is an outcome, not an error.
    last, last_change = -1, time.monotonic()
    while True:
        try:
            return _await_result(send, recv, min(deadline, time.monotonic() + 1.0), tag)
        except RunError as exc:
            if "timed out" not in str(exc):
                raise
        now = time.monotonic()
        pushed = int(send.seen.get("PROGRESS", {}).get("pushed", 0))
        if pushed != last:
            last, last_change = pushed, now
        elif now - last_change >= STALL_SECONDS:
            return {"pushed": pushed, "stalled": True}
        if now >= deadline:
            return {"pushed": pushed}


def _await_failover(
    recv: DriverProcess,
    holder: DriverProcess,
    config: dict[str, Any],
    argv: list[str],
    workdir: Path,
    env: dict[str, str],
    procs: list[DriverProcess],
    deadline: float,
    tag: str,
) -> dict[str, Any]:
    # The holder's messages all arrived; a standby opens the same database and
    # waits; the holder is SIGKILLed; the receiver reports when the standby's
    # first message arrived (time.monotonic() is one clock for every process).
    _await_tagged(recv, holder, "PROGRESS", deadline, f"{tag}: the holder's messages")
    standby_config = {**config, "standby": True}
    standby = DriverProcess([*argv, json.dumps(standby_config)], workdir / "standby.stderr", env)
    procs.append(standby)
    _await_tagged(standby, recv, "STANDBY", deadline, f"{tag}: the standby")
    killed_at = time.monotonic()
    holder.kill()
    result = _await_tagged(recv, standby, "RESULT", deadline, f"{tag}: the standby's messages")
    return {
        **result,
        "failover_ms": (result["taken_over_at"] - killed_at) * 1000,
        "rss_send_kib": standby.peak_rss_kib(),  # the holder is gone
    }


def _await_tagged(
    measuring: DriverProcess, other: DriverProcess, tag_line: str, deadline: float, what: str
) -> dict[str, Any]:
    """Wait for ``measuring``'s ``tag_line`` while ``other`` stays alive."""
    # Poll in short slices so a crash of the side that does not report is seen at once.
    while True:
        other.check_alive(f"{what}: the other side")
        try:
            return measuring.expect(tag_line, min(deadline, time.monotonic() + 0.5), tag_line)
        except RunError as exc:
            if "timed out" not in str(exc):
                raise RunError(f"{what}: {exc}") from None
            if time.monotonic() >= deadline:
                raise RunError(f"{what}: timed out after the run's limit") from None


def _await_result(
    measuring: DriverProcess, other: DriverProcess, deadline: float, tag: str
) -> dict[str, Any]:
    return _await_tagged(measuring, other, "RESULT", deadline, tag)


# --------------------------------------------------------------------------- the whole run


def _metric_keys(workload: Workload) -> tuple[str, ...]:
    if workload.round_trips:
        return ("median_us", "p99_us")
    if workload.mode == "noread":
        return ("rss_max_mib", "pushed")
    if workload.mode == "failover":
        return ("failover_ms",)
    return ("msgs_per_s", "mb_per_s")


def headline(workload: Workload) -> str:
    """The metric the table shows for a workload."""
    return {
        "msg/s": "msgs_per_s",
        "MB/s": "mb_per_s",
        "us": "median_us",
        "MiB": "rss_max_mib",
        "ms": "failover_ms",
    }[workload.unit]


def _median(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def run(
    systems: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    quick: bool = False,
    *,
    repeat: int = 3,
    timeout: float | None = None,
    out_dir: Path | str | None = DEFAULT_OUT_DIR,
    chart: bool = True,
    log: Any = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and return the report (also written to ``out_dir``).

    Args:
        systems: names from :data:`SYSTEMS` (default: all).
        workloads: names from :data:`WORKLOADS` (default: all).
        quick: tiny counts, for a smoke run.
        repeat: repetitions; the report gives medians.
        timeout: seconds per run before it is killed.
        out_dir: where ``results.json`` and ``throughput.png`` go (None: nowhere).
        chart: draw the PNG chart (needs matplotlib).
        log: a text stream for progress lines (default: stderr).
        profile: run every driver under cProfile; ``<out_dir>/profiles/`` gets one
            ``.prof`` per system, workload and side (last repetition) and
            ``summary.txt`` with the top functions of each. Slows every figure.

    Raises:
        ValueError: an unknown system or workload name, or repeat < 1.
    """
    log = log or sys.stderr
    chosen_systems = _choose(systems, SYSTEMS, "system")
    chosen_workloads = _choose(workloads, WORKLOADS, "workload")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if timeout is None:
        timeout = QUICK_TIMEOUT if quick else DEFAULT_TIMEOUT

    unavailable: dict[str, str] = {}
    for name in chosen_systems:
        reason = probe(SYSTEMS[name])
        if reason is not None:
            unavailable[name] = reason
            print(f"bench: {name} unavailable: {reason}", file=log)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {w: [] for w in chosen_workloads} for s in chosen_systems
    }
    profile_dir = None
    if profile:
        if out_dir is None:
            raise ValueError("profile needs an out_dir")
        profile_dir = Path(out_dir) / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snakemq-bench-") as tmp:
        tmpdir = Path(tmp)
        certificates = None
        if any(WORKLOADS[w].tls for w in chosen_workloads):
            certificates = make_certificates(tmpdir)
        database = None
        try:
            if any(WORKLOADS[w].postgres for w in chosen_workloads):
                from snakemq_proto.testing import TestPostgres

                database = TestPostgres(tmpdir / "postgres")
                database.start()
            for rep in range(repeat):
                for wname in chosen_workloads:
                    workload = WORKLOADS[wname]
                    for sname in chosen_systems:
                        system = SYSTEMS[sname]
                        if sname in unavailable or not supports(system, workload):
                            continue
                        workdir = tmpdir / f"{rep}-{wname}-{sname}"
                        workdir.mkdir()
                        try:
                            outcome = run_once(
                                system,
                                workload,
                                quick=quick,
                                timeout=timeout,
                                workdir=workdir,
                                certificates=certificates,
                                profile_dir=profile_dir,
                                database=database,
                            )
                        except RunError as exc:
                            outcome = {"ok": False, "error": str(exc)}
                        runs[sname][wname].append(outcome)
                        print(
                            f"bench: [{rep + 1}/{repeat}] {_progress(system, workload, outcome)}",
                            file=log,
                        )
        finally:
            DriverProcess.kill_all()
            if database is not None:
                database.stop()

    report = _report(chosen_systems, chosen_workloads, runs, unavailable, quick, repeat, timeout)
    report["profiled"] = profile
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        report["files"] = {"json": str(out / "results.json")}
        if chart:
            png = out / "throughput.png"
            try:
                draw_chart(report, png)
                report["files"]["chart"] = str(png)
            except ImportError as exc:
                print(f"bench: no chart: {exc}", file=log)
        if profile_dir is not None:
            summary = profile_dir / "summary.txt"
            summary.write_text(profile_summary(sorted(profile_dir.glob("*.prof"))))
            report["files"]["profiles"] = str(summary)
    return report


def profile_summary(paths: Sequence[Path], lines: int = 15) -> str:
    """The top ``lines`` functions by own time of each profile, one block per file."""
    import io
    import pstats

    out = io.StringIO()
    for path in paths:
        out.write(f"==== {path.name}\n")
        pstats.Stats(str(path), stream=out).strip_dirs().sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def _choose(names: Sequence[str] | None, known: dict[str, Any], what: str) -> list[str]:
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def _progress(system: System, workload: Workload, outcome: dict[str, Any]) -> str:
    name = f"{workload.name:<16} {system.name:<17}"
    if not outcome["ok"]:
        return f"{name} FAILED: {outcome['error']}"
    key = headline(workload)
    extra = ""
    if workload.round_trips:
        extra = f" p99 {outcome['p99_us']:.0f}"
    elif workload.mode == "noread":
        extra = f" after pushing {outcome['pushed']:,}" + (
            ", then pushed back or stuck" if outcome["stalled"] else ""
        )
    return f"{name} {outcome[key]:>12,.1f} {workload.unit}{extra}  ({outcome['wall_s']:.1f} s)"


def _report(
    systems: list[str],
    workloads: list[str],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    unavailable: dict[str, str],
    quick: bool,
    repeat: int,
    timeout: float,
) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for sname in systems:
        results[sname] = {}
        for wname in workloads:
            workload = WORKLOADS[wname]
            system = SYSTEMS[sname]
            cell: dict[str, Any]
            if sname in unavailable:
                cell = {"status": "unavailable", "error": unavailable[sname]}
            elif not supports(system, workload):
                cell = {"status": "n/a"}
            else:
                done = runs[sname][wname]
                good = [r for r in done if r["ok"]]
                errors = [r["error"] for r in done if not r["ok"]]
                cell = {"status": "ok" if good and not errors else "failed", "runs": done}
                if errors:
                    cell["error"] = errors[0]
                if good:
                    for key in (*_metric_keys(workload), "rss_send_kib", "rss_recv_kib"):
                        cell[key] = _median([r.get(key) for r in good])
            results[sname][wname] = cell

    for sname in systems:
        for wname in workloads:
            cell = results[sname][wname]
            for key in _metric_keys(WORKLOADS[wname]):
                if cell.get(key) is None or key == "pushed":
                    continue
                ratios: dict[str, float | None] = {}
                for ref in REFERENCES:
                    base = results.get(ref, {}).get(wname, {}).get(key)
                    ratios[ref] = cell[key] / base if base else None
                cell.setdefault("ratios", {})[key] = ratios
            versus = WORKLOADS[wname].versus
            key = headline(WORKLOADS[wname])
            against = results[sname].get(versus, {}).get(key)
            if versus and cell.get(key) is not None and against:
                cell["versus"] = {"workload": versus, "ratio": cell[key] / against}

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "quick": quick,
        "repeat": repeat,
        "timeout_s": timeout,
        "note": "medians of the repetitions; ratios are value / reference from this run"
        " (throughput: higher is better; latency and peak RSS: lower is better);"
        " noread: the receiver never reads, the sender pushes for a bounded time, 'pushed' counts"
        " the send calls that returned",
        "systems": {s: SYSTEMS[s].label for s in systems},
        "workloads": {
            w: {
                "label": WORKLOADS[w].label,
                "size": WORKLOADS[w].size,
                "count": WORKLOADS[w].quick_count if quick else WORKLOADS[w].count,
                "unit": WORKLOADS[w].unit,
            }
            for w in workloads
        },
        "unavailable": unavailable,
        "results": results,
    }


def all_ok(report: dict[str, Any]) -> bool:
    """True when every system ran and every supported cell has a figure from every repetition."""
    if report["unavailable"]:
        return False
    return all(
        cell["status"] in ("ok", "n/a")
        for per_system in report["results"].values()
        for cell in per_system.values()
    )


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _rows(report: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(workload name, metric key, row label) for every row of the table."""
    for wname, info in report["workloads"].items():
        workload = WORKLOADS[wname]
        if workload.round_trips:
            yield wname, "median_us", f"{info['label']} median (us)"
            yield wname, "p99_us", f"{info['label']} p99 (us)"
        elif workload.mode == "noread":
            yield wname, "rss_max_mib", f"{info['label']} peak RSS (MiB)"
            yield wname, "pushed", f"{info['label']} pushed"
        else:
            yield wname, headline(workload), f"{info['label']} ({info['unit']})"


def format_table(report: dict[str, Any]) -> str:
    """The terminal table: figures, ratios to each reference, peak RSS."""
    systems = list(report["systems"])
    results = report["results"]
    width = max(12, *(len(s) + 1 for s in systems))
    label_width = max(len(label) for _, _, label in _rows(report)) + 2

    def line(label: str, cells: list[str]) -> str:
        return label.ljust(label_width) + "".join(c.rjust(width) for c in cells)

    def cell_text(sname: str, wname: str, key: str, ref: str | None) -> str:
        cell = results[sname][wname]
        if cell["status"] == "n/a":
            return "n/a"
        if cell["status"] == "unavailable":
            return "absent"
        value = cell.get(key)
        if value is None:
            return "FAIL"
        if ref is None:
            text = _fmt(value, "")
        else:
            text = _fmt(cell.get("ratios", {}).get(key, {}).get(ref), "ratio")
        return text + ("!" if cell["status"] == "failed" else "")

    out: list[str] = []
    mode = "quick" if report["quick"] else "full"
    if report.get("profiled"):
        mode += ", PROFILED: slower than real"
    sections: list[tuple[str, str | None]] = [
        (f"median of {report['repeat']} ({mode} run)", None),
        *((f"ratio to {report['systems'][ref]}", ref) for ref in REFERENCES if ref in systems),
    ]
    for title, ref in sections:
        out.append("")
        out.append(line(title, systems))
        out.append("-" * (label_width + width * len(systems)))
        for wname, key, label in _rows(report):
            if ref is None or key != "pushed":
                out.append(line(label, [cell_text(s, wname, key, ref) for s in systems]))
    compared = [w for w in report["workloads"] if WORKLOADS[w].versus in report["workloads"]]
    if compared:
        out.append("")
        out.append(line("ratio to another workload, same system", systems))
        out.append("-" * (label_width + width * len(systems)))
        for wname in compared:
            label = f"{report['workloads'][wname]['label']} / {WORKLOADS[WORKLOADS[wname].versus].label}"
            cells = []
            for sname in systems:
                versus = results[sname][wname].get("versus")
                cells.append(
                    _fmt(versus["ratio"], "ratio") if versus else cell_text(sname, wname, "-", None)
                )
            out.append(line(label, cells))
    out.append("")
    out.append(line("peak RSS MiB send/recv", systems))
    out.append("-" * (label_width + width * len(systems)))
    for wname, info in report["workloads"].items():
        cells = []
        for sname in systems:
            cell = results[sname][wname]
            send, recv = cell.get("rss_send_kib"), cell.get("rss_recv_kib")
            cells.append(
                f"{send / 1024:.0f}/{recv / 1024:.0f}"
                if send is not None and recv is not None
                else cell_text(sname, wname, "rss_send_kib", None)
            )
        out.append(line(info["label"], cells))
    out.append("")
    out.append(
        "ratios: value / reference from this run (throughput: higher is better;"
        " latency and memory: lower is better)."
    )
    out.append(
        "no reader: the receiver never reads while the sender pushes for a bounded time;"
        " 'pushed' is how many send calls returned (a system that pushes back stops early)."
    )
    out.append(
        "n/a: the system has no such feature; FAIL: no repetition succeeded; !: some failed."
    )
    for sname, per in results.items():
        for wname, cell in per.items():
            if cell.get("error"):
                out.append(f"{sname}/{wname}: {cell['error']}")
    return "\n".join(out)


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """PNG: one panel per workload, one bar per system (log scale), medians."""
    # Imported by name: matplotlib is a bench-only dependency that the type checker's
    # environment need not have.
    import importlib

    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    systems = list(report["systems"])
    panels = [row for row in _rows(report) if row[1] != "pushed"]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (wname, key, label) in zip(axes.flat, panels, strict=False):
        values = [report["results"][s][wname].get(key) for s in systems]
        heights = [v if v else 0 for v in values]
        bars = ax.bar(
            range(len(systems)),
            heights,
            color=[colors[i % len(colors)] for i in range(len(systems))],
        )
        positive = [v for v in values if v]
        if positive:
            # Log scale: the systems differ by orders of magnitude; keep the smallest bar visible.
            ax.set_yscale("log")
            ax.set_ylim(min(positive) / 4, max(positive) * 3)
        for bar, value, sname in zip(bars, values, systems, strict=True):
            x = bar.get_x() + bar.get_width() / 2
            if value:
                ax.annotate(_fmt(value, ""), (x, value), ha="center", va="bottom", fontsize=8)
                continue
            status = report["results"][sname][wname]["status"]
            text = {"n/a": "n/a", "unavailable": "absent"}.get(status, "FAIL")
            # Missing figures are written at the foot of their slot (axes coordinates in y).
            ax.text(x, 0.03, text, ha="center", fontsize=8, transform=ax.get_xaxis_transform())
        lower_better = key.endswith(("_us", "_mib", "_ms"))
        ax.set_title(label + ("  (lower is better)" if lower_better else ""), fontsize=10)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, rotation=25, ha="right", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    mode = "quick" if report["quick"] else "full"
    fig.suptitle(f"snakemq benchmark, median of {report['repeat']} ({mode}), {report['created']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/run.py`` (and ``tox -e bench``): run, print the table, write the files."""
    parser = argparse.ArgumentParser(
        prog="bench", description="snakemq side by side with snakeMQ 1.6 and pyzmq"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--systems", help=f"comma-separated, from: {','.join(SYSTEMS)}")
    parser.add_argument("--workloads", help=f"comma-separated, from: {','.join(WORKLOADS)}")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--timeout", type=float, help="seconds per run before it is killed")
    parser.add_argument("--out", default=str(DEFAULT_OUT_DIR), help="output directory")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the drivers under cProfile; writes <out>/profiles/*.prof and summary.txt",
    )
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        report = run(
            _names(args.systems),
            _names(args.workloads),
            args.quick,
            repeat=args.repeat,
            timeout=args.timeout,
            out_dir=args.out,
            chart=not args.no_chart,
            profile=args.profile,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        DriverProcess.kill_all()
        print("bench: interrupted; every driver process killed", file=sys.stderr)
        return 130
    print(format_table(report))
    for kind, path in report.get("files", {}).items():
        print(f"{kind}: {path}")
    if not all_ok(report):
        print("bench: some runs failed or systems are missing (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
