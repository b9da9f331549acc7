"""The reconnect back-off and the redial hold: no clock, a seeded rng."""

from __future__ import annotations

import random

import pytest
from snakemq_proto import JITTER, Backoff, RedialHolds


def test_doubles_up_to_the_maximum_within_the_jitter() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal * JITTER[0] <= delay <= nominal * JITTER[1]


def test_a_seeded_rng_gives_the_same_delays() -> None:
    a = Backoff(0.5, 30.0, random.Random(1))
    b = Backoff(0.5, 30.0, random.Random(1))
    assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]


def test_reset_starts_over() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(3))
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_intervals_are_read_at_each_delay() -> None:
    # a program may change the link's interval after adding its connectors
    backoff = Backoff(1.0, 30.0, random.Random(3))
    backoff.interval = 0.1
    assert backoff.next_delay() <= 0.1
    backoff.max_interval = 0.15
    assert backoff.next_delay() <= 0.15


def test_max_below_interval_means_interval() -> None:
    backoff = Backoff(2.0, 1.0, random.Random(3))
    assert [backoff.next_delay() <= 2.0 for _ in range(3)] == [True] * 3


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "1", True, None])
def test_bad_intervals_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="reconnect_interval"):
        Backoff(bad, 30.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect_max_interval"):
        Backoff(1.0, bad)  # type: ignore[arg-type]


def test_redial_holds_release_per_peer() -> None:
    holds: RedialHolds[str] = RedialHolds()
    holds.hold("bob", "dial-1")
    holds.hold("bob", "dial-2")
    holds.hold("jack", "dial-3")
    assert "bob" in holds
    assert holds.release("alice") == []
    assert holds.release("bob") == ["dial-1", "dial-2"]
    assert "bob" not in holds
    assert holds.release("bob") == []
    assert list(holds.release_all()) == ["dial-3"]
    assert list(holds.release_all()) == []
