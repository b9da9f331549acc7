"""Queues in PostgreSQL (SqlAlchemyQueuesStorage) under the anyio Messaging:
a standby taking over a killed holder, the database server restarted
mid-stream, and a storage written against 1.6's interface."""

from __future__ import annotations

import time
from typing import Any

import anyio
import psycopg
import pytest
from snakemq_anyio import FLAG_PERSISTENT, LeaseLostError, Message, Messaging, StorageError
from snakemq_proto import SqlAlchemyQueuesStorage
from snakemq_proto.testing import TestPostgres, cut_holder_and_take_over
from test_persistence import _kill_after, _sender

pytestmark = pytest.mark.anyio


def _sessions(url: str) -> int:
    """Sessions open on the database of ``url`` (this one not counted)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_standby_takes_over_a_killed_holder_mid_stream(
    anyio_backend: str, pg_url: str
) -> None:
    got: list[int] = []
    with anyio.fail_after(90):
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for _ident, message in receiver:
                        got.append(int(message.data))

                tg.start_soon(collect)
                async with _sender(anyio_backend, pg_url, port, 100_000) as (holder, lines):
                    assert await lines.receive_until(b"\n", 100) == b"0"  # serving
                    async with _sender(anyio_backend, pg_url, port, 0) as (_standby, waiting):
                        while await anyio.to_thread.run_sync(_sessions, pg_url) < 2:
                            await anyio.sleep(0.05)  # the standby is connected, waiting
                        reported = await _kill_after(holder, lines, 0)
                        killed = time.monotonic()
                        # the standby enters Messaging only once it holds the lease
                        assert await waiting.receive_until(b"\n", 100) == b"done"
                        failover = time.monotonic() - killed
                        print(f"failover ({anyio_backend}): standby serving {failover:.2f} s")
                        assert failover < 10.0
                        while not set(range(reported + 1)) <= set(got):
                            await anyio.sleep(0.05)  # the receiver collects meanwhile
                tg.cancel_scope.cancel()
    assert len(got) == len(set(got)), "a message was handed to the application twice"
    assert set(range(reported + 1)) <= set(got)
    assert reported > 0, "the holder was killed before it sent anything"


async def test_server_restarted_mid_stream(
    anyio_backend: str, postgres: TestPostgres, pg_url: str
) -> None:
    sent: list[bytes] = []
    got: list[bytes] = []
    with anyio.fail_after(60):
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            async with Messaging("sender", storage=pg_url) as sender:
                await sender.add_connector(("127.0.0.1", port))
                for i in range(200):
                    if i == 100:
                        await anyio.to_thread.run_sync(postgres.stop)
                        with pytest.raises(StorageError, match=r"queue storage .*\*\*\*@"):
                            await sender.send_message(
                                "receiver", Message(b"down", ttl=None, flags=FLAG_PERSISTENT)
                            )
                        await anyio.to_thread.run_sync(postgres.start)
                    message = Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT)
                    await sender.send_message("receiver", message)
                    sent.append(message.data)
                while not set(sent) <= set(got):
                    _ident, message = await receiver.receive()
                    got.append(message.data)
    assert len(got) == len(set(got)), "a message was handed to the application twice"


class DictStorage16:
    """A storage written against snakeMQ 1.6's QueuesStorageBase."""

    def __init__(self) -> None:
        self.queues: dict[str, list[Any]] = {}

    def close(self) -> None:
        pass

    def get_queues(self) -> list[str]:
        return list(self.queues)

    def get_items(self, queue_name: str) -> list[Any]:
        return list(self.queues.get(queue_name, []))

    def push(self, queue_name: str, item: Any) -> None:
        self.queues.setdefault(queue_name, []).append(item)

    def delete_items(self, items: list[Any]) -> None:
        uuids = {item.uuid for item in items}
        for queue in self.queues.values():
            queue[:] = [item for item in queue if item.uuid not in uuids]

    def delete_all(self) -> None:
        self.queues.clear()

    def update_items_ttl(self, items: list[Any]) -> None:
        pass


async def test_storage_of_16_interface_plugs_in(anyio_backend: str) -> None:
    legacy = DictStorage16()
    stored = Message(b"from before", ttl=None, flags=FLAG_PERSISTENT)
    legacy.queues["receiver"] = [stored]
    with anyio.fail_after(30):
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            async with Messaging("sender", storage=legacy) as sender:
                assert sender.queued("receiver") == [stored]
                receipt = await sender.send_message(
                    "receiver", Message(b"new", ttl=None, flags=FLAG_PERSISTENT)
                )
                assert [m.data for m in legacy.queues["receiver"]] == [b"from before", b"new"]
                await sender.add_connector(("127.0.0.1", port))
                assert [(await receiver.receive())[1].data for _ in range(2)] == [
                    b"from before",
                    b"new",
                ]
                await receipt.delivered()
                while legacy.queues["receiver"]:
                    await anyio.sleep(0.02)  # the flusher applies the deletes


async def _refused(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_holder_that_lost_its_lease_steps_down(anyio_backend: str, pg_url: str) -> None:
    got: list[bytes] = []
    holder_storage = await anyio.to_thread.run_sync(
        lambda: SqlAlchemyQueuesStorage(pg_url, lease_poll=0.2)
    )
    with anyio.fail_after(60):
        async with Messaging("receiver") as receiver:
            _host, port = await receiver.add_listener(("127.0.0.1", 0))
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for _ident, message in receiver:
                        got.append(message.data)

                tg.start_soon(collect)
                with pytest.raises(LeaseLostError, match="taken over"):
                    async with Messaging("sender", storage=holder_storage) as holder:
                        _host, holder_port = await holder.add_listener(("127.0.0.1", 0))
                        await holder.add_connector(("127.0.0.1", port))
                        for i in range(20):
                            await holder.send_message(
                                "receiver", Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT)
                            )
                        for i in range(3):  # never delivered: they must survive the failover
                            await holder.send_message(
                                "away", Message(b"away %d" % i, ttl=None, flags=FLAG_PERSISTENT)
                            )
                        while len(got) < 20 or (
                            await anyio.to_thread.run_sync(_rows, pg_url, "receiver") > 0
                        ):
                            await anyio.sleep(0.02)  # delivered and deleted: the holder idles
                        other = await anyio.to_thread.run_sync(
                            cut_holder_and_take_over, pg_url, "sender"
                        )
                        stepped = time.monotonic()
                        await anyio.sleep_forever()  # the step-down cancels this body
                stepped_down = time.monotonic() - stepped
                assert stepped_down < 5.0
                assert await _refused(holder_port), "the holder still listens"
                with anyio.fail_after(5):
                    while receiver.is_connected("sender"):
                        await anyio.sleep(0.02)  # the holder's connection is closed
                # the other process goes away: a standby takes over and carries on
                await anyio.to_thread.run_sync(other.close)
                async with Messaging("sender", storage=pg_url) as standby:
                    assert [m.data for m in standby.queued("away")] == [
                        b"away 0",
                        b"away 1",
                        b"away 2",
                    ]
                    await standby.add_connector(("127.0.0.1", port))
                    for i in range(20, 40):
                        await standby.send_message(
                            "receiver", Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT)
                        )
                    while len(got) < 40:
                        await anyio.sleep(0.02)
                    assert not await anyio.to_thread.run_sync(lambda: holder_storage.check_lease())
                tg.cancel_scope.cancel()
    assert got == [b"%d" % i for i in range(40)], "lost or handed twice"


def _rows(url: str, ident: str) -> int:
    """Stored messages for ``ident`` in the database of ``url``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM snakemq_queue WHERE ident = %s", (ident,)
        ).fetchone()
    assert row is not None
    return int(row[0])
