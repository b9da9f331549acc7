"""Smoke run of the benchmark harness with tiny counts, so it cannot rot.

Not a performance test: nothing here looks at a speed.  It checks that every
system's drivers run every workload they support to the end (all messages
counted and sized), that the outputs are written, and that a run that hangs or
crashes is reported and leaves no process behind.

Needs what ``tox -e bench`` installs (pyzmq, matplotlib, trustme, our packages)
and network access to PyPI the first time (snakeMQ 1.6 goes into bench/.venv16).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness
import pytest

BENCH_DIR = Path(__file__).resolve().parent


@pytest.mark.parametrize("system", list(harness.SYSTEMS))
def test_every_supported_workload_completes(system: str, tmp_path: Path) -> None:
    report = harness.run([system], quick=True, repeat=1, out_dir=tmp_path, chart=False)

    assert report["unavailable"] == {}
    for wname, cell in report["results"][system].items():
        workload = harness.WORKLOADS[wname]
        if not harness.supports(harness.SYSTEMS[system], workload):
            assert cell["status"] == "n/a"
            continue
        assert cell["status"] == "ok", f"{system}/{wname}: {cell.get('error')}"
        (only,) = cell["runs"]
        assert only["rss_send_kib"] > 0
        assert only["rss_recv_kib"] > 0
        if workload.round_trips:
            assert only["round_trips"] == workload.quick_count
            assert 0 < cell["median_us"] <= cell["p99_us"]
            if workload.cpu is not None:
                assert only["cpus"] == [workload.cpu]
            else:
                assert len(only["cpus"]) == len(os.sched_getaffinity(0))
        elif workload.mode == "failover":
            assert cell["failover_ms"] > 0
        elif workload.mode == "noread":
            # A system may push back before all are queued; it must have pushed something.
            assert 0 < only["pushed"] <= workload.quick_count
            assert cell["rss_max_mib"] * 1024 == max(only["rss_send_kib"], only["rss_recv_kib"])
        else:
            assert cell["msgs_per_s"] > 0
            assert cell["mb_per_s"] == pytest.approx(cell["msgs_per_s"] * workload.size / 1e6)
        if workload.versus:  # PostgreSQL / SQLite, from the same run
            key = harness.headline(workload)
            against = report["results"][system][workload.versus][key]
            assert cell["versus"]["ratio"] == pytest.approx(cell[key] / against)


def test_outputs_table_json_chart_and_ratios(tmp_path: Path) -> None:
    systems = ["snakemq-1.6", "zmq-pushpull", "zmq-dealerrouter"]
    report = harness.run(
        systems, ["100B", "100B-persistent", "latency"], quick=True, repeat=2, out_dir=tmp_path
    )

    assert harness.all_ok(report)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["results"].keys() == set(systems)
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    legacy = report["results"]["snakemq-1.6"]
    zmq = report["results"]["zmq-pushpull"]
    assert len(legacy["100B"]["runs"]) == 2
    assert legacy["100B"]["ratios"]["msgs_per_s"]["snakemq-1.6"] == pytest.approx(1.0)
    assert zmq["100B"]["ratios"]["msgs_per_s"]["snakemq-1.6"] == pytest.approx(
        zmq["100B"]["msgs_per_s"] / legacy["100B"]["msgs_per_s"]
    )
    assert legacy["latency"]["ratios"]["median_us"]["zmq-pushpull"] == pytest.approx(
        legacy["latency"]["median_us"] / zmq["latency"]["median_us"]
    )
    assert zmq["100B-persistent"]["status"] == "n/a"

    table = harness.format_table(report)
    for heading in ("ratio to snakeMQ 1.6", "ratio to pyzmq PUSH/PULL", "peak RSS MiB"):
        assert heading in table
    persistent_row = next(
        line for line in table.splitlines() if line.startswith("100 B persistent")
    )
    assert "n/a" in persistent_row


def test_command_line_quick_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / "run.py"),
            "--quick",
            "--repeat=1",
            "--systems=zmq-pushpull",
            "--workloads=100B,1MiB",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "100 B (msg/s)" in done.stdout
    assert "1 MiB (MB/s)" in done.stdout
    assert (tmp_path / "results.json").exists()


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown system nosuch"):
        harness.run(["nosuch"], quick=True, out_dir=None)
    with pytest.raises(ValueError, match="unknown workload 2B"):
        harness.run(["zmq-pushpull"], ["2B"], quick=True, out_dir=None)


def _spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the pid of every driver process the harness starts."""
    pids: list[int] = []
    original = harness.DriverProcess.__init__

    def recording(self: harness.DriverProcess, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        pids.append(self.popen.pid)

    monkeypatch.setattr(harness.DriverProcess, "__init__", recording)
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_run_over_its_time_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = _spawned(monkeypatch)
    workload = dataclasses.replace(harness.WORKLOADS["100B"], quick_count=10**9)

    with pytest.raises(harness.RunError, match="timed out"):
        harness.run_once(
            harness.SYSTEMS["zmq-pushpull"],
            workload,
            quick=True,
            timeout=3.0,
            workdir=tmp_path,
            certificates=None,
        )

    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids)


def test_a_crashing_driver_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = _spawned(monkeypatch)
    broken = dataclasses.replace(harness.SYSTEMS["zmq-pushpull"], driver="no_such_driver.py")

    with pytest.raises(harness.RunError, match=r"exited with 2: .*no_such_driver\.py"):
        harness.run_once(
            broken,
            harness.WORKLOADS["100B"],
            quick=True,
            timeout=30.0,
            workdir=tmp_path,
            certificates=None,
        )

    assert all(_gone(pid) for pid in pids)


def test_profile_leaves_statistics_of_both_sides(tmp_path: Path) -> None:
    report = harness.run(
        ["snakemq-1.6"], ["100B"], quick=True, repeat=1, out_dir=tmp_path, chart=False, profile=True
    )

    assert harness.all_ok(report)
    profiles = tmp_path / "profiles"
    assert sorted(p.name for p in profiles.glob("*.prof")) == [
        "snakemq-1.6-100B-recv.prof",
        "snakemq-1.6-100B-send.prof",
    ]
    summary = (profiles / "summary.txt").read_text()
    for name in ("snakemq-1.6-100B-recv.prof", "snakemq-1.6-100B-send.prof"):
        assert f"==== {name}" in summary
    assert summary.count("Ordered by: internal time") == 2
    assert "PROFILED" in harness.format_table(report)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _poll(condition: Any, seconds: float) -> bool:
    """Check ``condition`` until it holds or ``seconds`` pass (nothing to wait on but /proc)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.05)
    return True


def test_drivers_do_not_outlive_a_killed_harness(tmp_path: Path) -> None:
    # zmq's sender is pushed back by a receiver that never reads: the run lasts seconds.
    harness_proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "run.py"),
            "--repeat=1",
            "--systems=zmq-pushpull",
            "--workloads=noread",
            f"--out={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        drivers: list[int] = []

        def both_started() -> bool:
            drivers[:] = _children(harness_proc.pid)
            return len(drivers) == 2

        assert _poll(both_started, 30), "the harness did not start its two drivers"
    finally:
        harness_proc.kill()
        harness_proc.wait()

    try:
        assert _poll(lambda: not any(_alive(pid) for pid in drivers), 15), (
            "drivers outlived the harness"
        )
    finally:
        for pid in drivers:  # so a failure here leaves nothing behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
