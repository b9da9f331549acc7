"""What every benchmark driver shares: its configuration, and how it talks to the harness.

A driver is started as ``python <driver>.py '<json config>'`` and speaks a line
protocol on stdout:

- ``READY {"port": ...}`` once it listens (receivers and echo servers);
- ``RESULT {...}`` once it has measured what it was asked to measure;
- ``PROGRESS {"pushed": n}`` now and then while a sender pushes to a receiver
  that does not read (``mode == "noread"``).

After that a driver keeps running (so its connections stay up and its peak RSS
can be read) until the harness kills it.  Nothing here may import anything but
the standard library: the same file runs in the snakeMQ 1.6 virtualenv.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from typing import Any

#: The receiver's identifier; senders address their messages to it.
RECEIVER_IDENT = "recv"
#: The sender's identifier.
SENDER_IDENT = "send"
#: TTL of every benchmark message (the tutorial's value).
TTL = 600
#: Bytes a windowed sender keeps queued but not yet sent.
WINDOW_BYTES = 4 * 1024 * 1024
#: Messages a windowed sender keeps queued but not yet sent, at most.
WINDOW_MESSAGES = 1000


def load_config() -> dict[str, Any]:
    """The driver's configuration: the JSON object given as the only argument.

    With ``config["profile"]`` set, the main thread runs under cProfile from
    here on, and SIGTERM writes the statistics to that path and exits.  With
    ``config["cpu"]`` set, the process (and every thread it starts from here on:
    pyzmq's I/O thread, anyio's workers) runs on that one CPU, as under
    ``taskset -c N``.
    """
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} '<json config>'")
    config: dict[str, Any] = json.loads(sys.argv[1])
    if config.get("cpu") is not None:
        os.sched_setaffinity(0, {int(config["cpu"])})
    _start_watchdog(float(config.get("max_lifetime", 3600)))
    if config.get("profile"):
        _start_profile(config["profile"])
    return config


def _start_watchdog(max_lifetime: float) -> None:
    """Exit if the harness dies (we are re-parented) or the run overstays: no stragglers."""
    import threading

    parent = os.getppid()
    end = time.monotonic() + max_lifetime

    def watch() -> None:
        while os.getppid() == parent and time.monotonic() < end:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


def _start_profile(path: str) -> None:
    import cProfile
    import signal

    profiler = cProfile.Profile()

    def dump(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(path)
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()


#: Persistent messages a windowed sender keeps queued but not yet sent, at most: the
#: receiver's clock starts at the first arrival, so whatever is stored before that
#: goes unmeasured — keep it small.
WINDOW_PERSISTENT = 100


def window(size: int, persistent: bool = False) -> int:
    """How many messages of ``size`` bytes a sender keeps in flight."""
    most = WINDOW_PERSISTENT if persistent else WINDOW_MESSAGES
    return max(4, min(most, WINDOW_BYTES // max(1, size)))


def peak_rss_kib() -> int:
    """Peak resident set size of this process, in KiB."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def emit(tag: str, payload: dict[str, Any]) -> None:
    """Write one protocol line to the harness."""
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def ready(**info: Any) -> None:
    """Tell the harness where this driver listens."""
    emit("READY", info)


def block_forever() -> None:
    """Keep the process (and whatever threads it runs) alive until the harness kills it."""
    while True:
        time.sleep(3600)


#: A pushing sender reports its progress every this many messages.
PROGRESS_EVERY = 1_000


def pushed(count: int) -> None:
    """Report how many send calls have returned so far (no-reader workload)."""
    emit("PROGRESS", {"pushed": count})


class ThroughputMeter:
    """Counts received messages, checks their size, times first to last."""

    def __init__(self, count: int, size: int) -> None:
        self.expected = count
        self.size = size
        self.received = 0
        self.bytes = 0
        self.wrong_size = 0
        self.first = 0.0
        self.last = 0.0
        self.reported = False

    def add(self, length: int) -> bool:
        """Record one message of ``length`` bytes; True once all have arrived.

        Kept lean (the clock is read only at the first and the last message):
        it runs once per message inside the measured interval.
        """
        self.received += 1
        self.bytes += length
        if length != self.size:
            self.wrong_size += 1
        if self.received == 1:
            self.first = time.perf_counter()
        if self.received >= self.expected:
            self.last = time.perf_counter()
            return True
        return False

    def report(self) -> None:
        """Send the RESULT line (once)."""
        if self.reported:
            return
        self.reported = True
        emit(
            "RESULT",
            {
                "received": self.received,
                "bytes": self.bytes,
                "wrong_size": self.wrong_size,
                "elapsed": self.last - self.first,
                "rss_kib": peak_rss_kib(),
            },
        )


class RpcEcho:
    """The object every RPC workload serves (as ``"bench"``): one method, ``echo``."""

    def echo(self, text: str) -> str:
        return text


class LatencyMeter:
    """Round-trip times of a ping-pong client, warm-up excluded."""

    def __init__(self, count: int, warmup: int, size: int) -> None:
        self.count = count
        self.warmup = warmup
        self.size = size
        self.samples: list[float] = []
        self.seen = 0
        self.wrong_size = 0
        self.sent_at = 0.0
        self.reported = False

    def start(self) -> None:
        """Mark the moment a ping is sent."""
        self.sent_at = time.perf_counter()

    def done(self, length: int) -> bool:
        """Record the echo of the last ping; True once enough round trips are measured."""
        rtt = time.perf_counter() - self.sent_at
        if length != self.size:
            self.wrong_size += 1
        self.seen += 1
        if self.seen > self.warmup:
            self.samples.append(rtt)
        return len(self.samples) >= self.count

    def report(self) -> None:
        """Send the RESULT line (once)."""
        if self.reported:
            return
        self.reported = True
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        emit(
            "RESULT",
            {
                "round_trips": len(ordered),
                "wrong_size": self.wrong_size,
                "median_us": statistics.median(ordered) * 1e6,
                "p99_us": p99 * 1e6,
                "rss_kib": peak_rss_kib(),
                "cpus": sorted(os.sched_getaffinity(0)),
            },
        )


#: Failover: the first byte of the holder's messages and of the standby's.
HOLDER_MARK = b"h"
STANDBY_MARK = b"s"


class FailoverMeter:
    """The receiver of the failover workload: counts the holder's messages
    (``PROGRESS`` once all arrived) and reports, as ``RESULT``, the monotonic
    time (comparable across processes on Linux) of the first message the
    standby sent after it took over."""

    def __init__(self, count: int) -> None:
        self.expected = count
        self.received = 0
        self.reported = False

    def add(self, data: bytes) -> bool:
        """Record one message; True once the standby's first one arrived."""
        if self.reported:
            return True
        if data[:1] == STANDBY_MARK:
            self.reported = True
            emit("RESULT", {"taken_over_at": time.monotonic(), "received": self.received})
            return True
        self.received += 1
        if self.received == self.expected:
            emit("PROGRESS", {"received": self.received})
        return False


def failover_payload(config: dict[str, Any]) -> bytes:
    """What a failover sender sends: marked as the holder's or the standby's."""
    mark = STANDBY_MARK if config.get("standby") else HOLDER_MARK
    return mark * int(config["size"])


def standing_by() -> None:
    """Tell the harness this sender opened its storage and waits as a standby."""
    emit("STANDBY", {})
