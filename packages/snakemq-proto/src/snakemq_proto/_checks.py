"""Argument checks and defaults shared by the I/O packages.

``snakemq`` and ``snakemq_anyio`` take the same options from a program
(addresses, seconds); they check them here, so both accept exactly the same
input and name the argument in the same words when they refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_KEEPALIVE_WAIT",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_MAX_INTERVAL",
    "check_address",
    "check_seconds",
]

DEFAULT_KEEPALIVE_INTERVAL = 60.0
"""Seconds of silence before a connection is pinged, in both I/O packages.
On by default (1.6 had it off): a user who never read about keepalive still
expects a dead peer (a silent partition, a frozen host) to be noticed, and
a capable or 1.6 peer answers a ping whatever it is doing."""

DEFAULT_KEEPALIVE_WAIT = 10.0
"""Seconds to wait for any answer to a ping before closing, in both I/O
packages (1.6's 0.5 s suited a loop that pinged only when asked to; with
keepalive on by default a busy or slow peer must not be cut off)."""

DEFAULT_RECONNECT_INTERVAL = 1.0
"""Seconds before a connector's first redial (see ``Backoff``)."""

DEFAULT_RECONNECT_MAX_INTERVAL = 30.0
"""The longest delay of a connector's back-off."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds one dial (TCP connect to every address of the name) may take."""


def check_address(address: object, name: str = "address") -> tuple[str, int]:
    """Check a ``(host, port)`` given by the program; return it as a tuple.

    A tuple or a list of two items: ``host`` a ``str`` (``""`` is every
    interface for a listener), ``port`` an ``int`` in 0..65535.

    Raises:
        TypeError: not a pair, or a host or port of the wrong type.
        ValueError: a port out of range.
    """
    if not isinstance(address, tuple | list) or len(address) != 2:
        raise TypeError(f"{name} must be a (host: str, port: int) tuple, got {address!r}")
    host, port = _pair(address)
    if not isinstance(host, str):
        raise TypeError(f"{name}[0] (host) must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name}[1] (port) must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}[1] (port) must be in 0..65535, got {port!r}")
    return host, port


def _pair(address: Sequence[object]) -> tuple[object, object]:
    return address[0], address[1]


def check_seconds(value: object, name: str) -> float:
    """Check a duration given by the program: a positive, finite number of
    seconds (``bool`` is not a number here).  Return it as a ``float``.

    Raises:
        ValueError: anything else, naming ``name``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or math.isinf(value)
    ):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)
