"""LeaseWatch: when a holder checks its lease, and what the outcome means
(no server: a lease stand-in whose answers the test sets)."""

from __future__ import annotations

import logging

import pytest
from snakemq_proto import LeaseWatch, RenewableLease, StorageError, lease_watch


class FakeLease:
    """Answers ``check_lease`` with the next of ``answers`` (an exception is raised)."""

    lease_poll = 2.0
    leased = True

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.checks = 0

    def wait_acquire(self, seconds: float) -> bool:
        return False

    def check_lease(self) -> bool:
        self.checks += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_checks_every_lease_poll_seconds() -> None:
    lease = FakeLease(True, True)
    watch = LeaseWatch(lease)
    assert watch.deadline(100.0) == 102.0
    assert not watch.due(101.9)
    assert watch.due(102.0)
    assert watch.check(102.5) is False  # still held: serve on
    assert watch.deadline(103.0) == 104.5
    assert not watch.due(104.4)
    assert watch.check(104.5) is False
    assert lease.checks == 2


def test_lost_lease_means_step_down() -> None:
    watch = LeaseWatch(FakeLease(True, False))
    assert watch.check(0.0) is False
    assert watch.check(2.0) is True


def test_unreachable_server_decides_nothing_and_is_logged_once_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = StorageError("cannot check the lease: the server cannot be reached")
    watch = LeaseWatch(FakeLease(down, down, down, True, down))
    with caplog.at_level(logging.WARNING, logger="snakemq.storage"):
        assert [watch.check(float(t)) for t in range(5)] == [False] * 5
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "cannot check the lease" in w]) == 2
    assert len([w for w in warnings if "still held" in w]) == 1


def test_only_a_leased_renewable_storage_is_watched() -> None:
    assert isinstance(FakeLease(), RenewableLease)
    assert isinstance(lease_watch(FakeLease()), LeaseWatch)
    unleased = FakeLease()
    unleased.leased = False
    assert lease_watch(unleased) is None
    assert lease_watch(object()) is None
    assert lease_watch(None) is None
