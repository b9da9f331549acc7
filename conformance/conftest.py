"""Fixtures of the conformance suite and the matrix it prints at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _harness import RESULTS, Certs, PeerLauncher, Row, RowResult, render_matrix, write_json
from snakemq_proto.testing import postgres_fixtures

postgres, pg_url = postgres_fixtures()

_RESULTS_KEY = pytest.StashKey[list[RowResult]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS_KEY] = []


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def details(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Measurements a test wants in the JSON matrix (kills, timings, counts)."""
    box: dict[str, Any] = {}
    request.node.stash[_DETAILS_KEY] = box
    return box


_DETAILS_KEY = pytest.StashKey[dict[str, Any]]()


@pytest.fixture
def storage_dir(tmp_path: Path) -> Iterator[Path]:
    """Where queue storages live: a directory on tmpfs when there is one.

    The suite SIGKILLs processes, it does not cut power: the page cache
    survives, so fsync adds nothing to what is tested here, and snakeMQ 1.6
    commits (fsyncs) once per message — 5,000 of them on a busy disk blow the
    time budget.  The packages' own tests cover SQLite on a real disk.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="snakemq-conformance-", dir=shm))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PeerLauncher]:
    """Start driver processes; every one is SIGKILLed at the end, pass or fail."""
    launcher = PeerLauncher(tmp_path)
    try:
        yield launcher
    finally:
        logs = launcher.logs()
        launcher.close()
        if logs:
            request.node.add_report_section("teardown", "peer logs", logs)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    row = callspec.params.get("row") if callspec is not None else None
    if not isinstance(row, Row):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        xfail = getattr(report, "wasxfail", None)
        if xfail is not None:
            result = "XPASS" if report.passed else "xfail"
        elif report.passed:
            result = "pass"
        else:
            result = "FAIL" if report.when == "call" else "ERROR"
        message = ""
        if report.longrepr is not None and (report.failed or xfail is not None):
            crash = getattr(report.longrepr, "reprcrash", None)
            message = str(getattr(crash, "message", report.longrepr)).splitlines()[0]
        item.config.stash[_RESULTS_KEY].append(
            RowResult(
                row=row,
                outcome=result,
                reason=str(xfail or ""),
                seconds=report.duration,
                details=item.stash.get(_DETAILS_KEY, {}),
                message=message,
            )
        )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash[_RESULTS_KEY]
    if not results:
        return
    terminalreporter.write_sep("=", "snakemq conformance matrix")
    terminalreporter.write_line(render_matrix(results))
    path = RESULTS / "matrix.json"
    write_json(results, path)
    terminalreporter.write_line(f"machine-readable matrix: {path}")
