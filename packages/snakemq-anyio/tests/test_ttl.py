"""TTL over real loopback sockets."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from snakemq_anyio import (
    Message,
    MessageDropped,
    MessageDroppedError,
    Messaging,
    PeerDisconnected,
)
from snakemq_proto import (
    FLAG_PERSISTENT,
    QUEUE_WINDOW,
    SqliteQueuesStorage,
    StorageBatch,
    StorageError,
)

pytestmark = pytest.mark.anyio


async def test_ttl_drop_while_disconnected() -> None:
    async with Messaging("bob") as bob:
        with bob.events() as events:
            # never connected: dropped when the TTL runs out, reported both ways
            receipt = await bob.send_message("carol", Message(b"late", ttl=0.2))
            assert bob.queued("carol")
            with anyio.fail_after(10), pytest.raises(MessageDroppedError) as info:
                await receipt.delivered()
            assert info.value.uuid == receipt.uuid and info.value.ident == "carol"
            assert bob.queued("carol") == []
            with anyio.fail_after(10):
                event = await events.receive()
            assert isinstance(event, MessageDropped) and event.uuid == receipt.uuid
            # ttl=0 reaches only a peer connected right now
            now_only = await bob.send_message("carol", Message(b"now", ttl=0))
            with pytest.raises(MessageDroppedError):
                await now_only.delivered()


async def test_ttl_drop_after_peer_went_away() -> None:
    async with Messaging("bob") as bob:
        with bob.events() as events:
            async with Messaging("alice") as alice:
                _host, port = await alice.add_listener(("127.0.0.1", 0))
                connector = await bob.add_connector(("127.0.0.1", port))
                with anyio.fail_after(10):
                    await bob.wait_connected("alice")
            connector.cancel()
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, PeerDisconnected):
                        break
            receipt = await bob.send_message("alice", Message(b"short-lived", ttl=0.1))
            with anyio.fail_after(10), pytest.raises(MessageDroppedError):
                await receipt.delivered()


async def test_mass_expiry_of_stored_messages_does_not_stall_the_loop(tmp_path: Path) -> None:
    """Issue 14: 50k persistent messages (real SQLite, six windows of
    ``QUEUE_WINDOW`` read back while they expire) running out together are
    dropped in bounded steps: round trips with another peer go on all the
    while, the loop never stalls for a second, and every message is dropped.

    Two measures.  The stall itself: how late a task sleeping 10 ms wakes
    (a round trip spans several loop passes, so on a loaded machine it
    exceeded 1 s with no pass near it: 1.12 s, the probe saw < 0.6 s).  And
    how many drops one round trip saw, which does not depend on the
    machine: before the bounded expiry (4439d55^) one call dropped all 50k
    between two round trips (stalling 0.5-0.7 s idle, 1.4-2.4 s loaded);
    now at most a window's worth (6-8k).  ``EXPIRE_BATCH`` itself is pinned
    by ``test_engine_window`` in snakemq-proto."""
    n = 50_000
    db = str(tmp_path / "q.db")
    with SqliteQueuesStorage(db) as storage:
        storage.apply(
            StorageBatch(
                push=[
                    ("gone", Message(b"%d" % i, ttl=2.0, flags=FLAG_PERSISTENT)) for i in range(n)
                ]
            )
        )
    async with Messaging("a", storage=db) as a, Messaging("b") as b:
        # subscribed before anything awaits: the TTLs run from the load, and a
        # loaded machine may take longer than them to connect
        events = a.events(max_buffered=n)
        _, port = await a.add_listener(("127.0.0.1", 0))
        await b.add_connector(("127.0.0.1", port))
        with anyio.fail_after(10):
            await b.wait_connected("a")
        dropped = 0

        async def count_drops() -> None:
            nonlocal dropped
            with events:
                async for event in events:
                    if isinstance(event, MessageDropped):
                        dropped += 1

        async def hand() -> None:
            async for _ in a:
                pass

        late = 0.0  # the longest the loop kept a 10 ms sleeper waiting beyond 10 ms

        async def probe() -> None:
            nonlocal late
            while True:
                t = time.monotonic()
                await anyio.sleep(0.01)
                late = max(late, time.monotonic() - t - 0.01)

        steps: list[int] = []  # drops seen during each round trip
        async with anyio.create_task_group() as tg:
            tg.start_soon(count_drops)
            tg.start_soon(hand)
            tg.start_soon(probe)
            with anyio.fail_after(60):
                while dropped < n:  # before, during and at the end of the expiry
                    before = dropped
                    receipt = await b.send_message("a", Message(b"ping", ttl=None))
                    await receipt.delivered()
                    steps.append(dropped - before)
            tg.cancel_scope.cancel()
        assert dropped == n
        assert a.queued("gone") == []
        assert max(steps) <= n // 2, f"{max(steps)} drops during one round trip"
        assert late < 1.0, f"the loop stalled {late:.3f} s during the expiry"


class _ReadsFailUntil(SqliteQueuesStorage):
    """Its ``read_queue`` raises (a storage error) until ``until``
    (``time.monotonic()``)."""

    until = 0.0
    failed = 0

    def read_queue(self, ident: str, after: int, end: int, count: int) -> list[tuple[int, Message]]:
        if time.monotonic() < self.until:
            self.failed += 1
            raise StorageError("disk I/O error (test)")
        return super().read_queue(ident, after, end, count)


async def test_rows_whose_read_failed_are_read_again_with_nothing_else_going_on(
    tmp_path: Path,
) -> None:
    """A failed read of the rows past a restored queue's window is retried by
    itself: with the peer away and nothing else happening, the rows on disk
    still run out and are dropped.  Before, a read that failed after the
    window had run out waited for some unrelated event to wake the flusher:
    here, none ever came."""
    n = QUEUE_WINDOW + 100
    db = str(tmp_path / "q.db")
    with SqliteQueuesStorage(db) as storage:
        storage.apply(
            StorageBatch(
                push=[
                    ("gone", Message(b"%d" % i, ttl=0.5, flags=FLAG_PERSISTENT)) for i in range(n)
                ]
            )
        )
    storage = _ReadsFailUntil(db)
    # reads fail until well after the window ran out (0.5 s) and was dropped
    storage.until = time.monotonic() + 3.0
    async with Messaging("a", storage=storage) as a:
        dropped = 0
        with a.events(max_buffered=n) as events, anyio.fail_after(30):
            async for event in events:
                if isinstance(event, MessageDropped):
                    dropped += 1
                    if dropped == n:
                        break
    assert storage.failed
