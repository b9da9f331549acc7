"""Argument checks shared by the I/O packages."""

from __future__ import annotations

import pytest
from snakemq_proto import check_address, check_seconds


@pytest.mark.parametrize(
    ("address", "expected"),
    [(("127.0.0.1", 0), ("127.0.0.1", 0)), (["", 65535], ("", 65535)), (("::1", 80), ("::1", 80))],
)
def test_good_addresses(address: object, expected: tuple[str, int]) -> None:
    assert check_address(address) == expected


@pytest.mark.parametrize(
    ("address", "error", "words"),
    [
        ("127.0.0.1:80", TypeError, "address must be a"),
        (("127.0.0.1",), TypeError, "address must be a"),
        (("127.0.0.1", 80, 0, 0), TypeError, "address must be a"),
        ((b"host", 80), TypeError, r"address\[0\] \(host\)"),
        (("host", "80"), TypeError, r"address\[1\] \(port\)"),
        (("host", True), TypeError, r"address\[1\] \(port\)"),
        (("host", 65536), ValueError, r"0\.\.65535"),
        (("host", -1), ValueError, r"0\.\.65535"),
    ],
)
def test_bad_addresses_are_named(address: object, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        check_address(address)


def test_the_name_is_the_callers() -> None:
    with pytest.raises(TypeError, match="listen_on"):
        check_address(None, "listen_on")


@pytest.mark.parametrize("good", [0.001, 1, 2.5])
def test_good_seconds(good: float) -> None:
    assert check_seconds(good, "x") == float(good)


@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), float("nan"), "1", True, None])
def test_bad_seconds_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="reconnect_interval"):
        check_seconds(bad, "reconnect_interval")
