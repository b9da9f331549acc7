"""Async RPC on asyncio and trio over real loopback sockets."""

from __future__ import annotations

import pickle
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from snakemq_anyio import Message, Messaging
from snakemq_anyio.rpc import NotConnected, PartialCall, RemoteError, Rpc, as_signal
from snakemq_proto.rpc import REQUEST_PREFIX

pytestmark = pytest.mark.anyio


class Service:
    def __init__(self) -> None:
        self.calls = 0
        self.signals: list[Any] = []
        self.signalled = anyio.Event()
        self.release = anyio.Event()
        self.entered = anyio.Event()
        self.requests_seen = 0

    def add(self, a: int, b: int) -> int:  # a plain method: runs in a worker thread
        self.calls += 1
        return a + b

    async def echo(self, value: Any) -> Any:
        return value

    async def fail(self) -> None:
        raise ValueError("bad value on the server")

    async def slow(self) -> str:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return "done"

    @as_signal
    async def notify(self, value: Any) -> None:
        self.signals.append(value)
        self.signalled.set()


@asynccontextmanager
async def pair(
    service: Service, pickler: Any = None
) -> AsyncIterator[tuple[Messaging, Messaging, Rpc, Rpc]]:
    async with (
        Messaging("server", reconnect_interval=0.05) as server,
        Messaging("client", reconnect_interval=0.05) as client,
        Rpc(server, pickler) as server_rpc,
        Rpc(client, pickler) as client_rpc,
    ):
        server_rpc.register_object(service, "svc")
        _, port = await server.add_listener(("127.0.0.1", 0))
        await client.add_connector(("127.0.0.1", port))
        with anyio.fail_after(10):
            await client.wait_connected("server")
        yield server, client, server_rpc, client_rpc
        service.release.set()


async def test_calls_signals_and_exceptions() -> None:
    service = Service()
    async with pair(service) as (_, _, _, rpc):
        proxy = rpc.get_proxy("server", "svc")
        with anyio.fail_after(10):
            assert await proxy.add(2, 3) == 5
            assert await proxy.echo({"b": b"\x00", "n": None}) == {"b": b"\x00", "n": None}
            with pytest.raises(ValueError, match="bad value on the server"):
                await proxy.fail()
            with pytest.raises(RemoteError, match="NoMethodError"):
                await proxy.missing()
            proxy.notify.as_signal(10)
            assert await proxy.notify("ping") is None
            await service.signalled.wait()
        assert service.signals == ["ping"]


async def test_timeouts() -> None:
    service = Service()
    async with pair(service) as (_, _, _, rpc):
        absent = rpc.get_proxy("nobody", "svc").add
        absent.set_timeout(0.2)
        with pytest.raises(NotConnected):
            await absent(1, 2)
        slow = rpc.get_proxy("server", "svc").slow
        slow.set_timeout(0.2)
        with pytest.raises(PartialCall):
            await slow()


async def test_cancelled_call_leaves_rpc_usable() -> None:
    service = Service()
    async with pair(service) as (_, _, _, rpc):
        proxy = rpc.get_proxy("server", "svc")
        with anyio.move_on_after(0.2):
            await proxy.slow()
        service.release.set()
        with anyio.fail_after(10):
            assert await proxy.add(1, 1) == 2


async def test_call_resent_after_reconnect_executes_once() -> None:
    service = Service()
    async with pair(service) as (server, _client, server_rpc, rpc):
        result: list[str] = []
        requests = 0
        resent = anyio.Event()
        original = server_rpc._on_request

        def counting(ident: str, payload: bytes) -> None:
            nonlocal requests
            requests += 1
            if requests == 2:
                resent.set()
            original(ident, payload)

        server_rpc._on_request = counting  # type: ignore[method-assign]

        async def call() -> None:
            result.append(await rpc.get_proxy("server", "svc").slow())

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await service.entered.wait()
                server.disconnect("client")  # the client reconnects and re-sends
                await resent.wait()  # the repeat arrives while the first still runs
                service.release.set()
        assert result == ["done"]
        assert service.calls == 1


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


async def test_pickle_payload_refused_by_default(tmp_path: Path) -> None:
    service = Service()
    marker = tmp_path / "pwned"
    async with pair(service) as (_, client, _, rpc):
        payload = pickle.dumps(
            {"command": "call", "object": "svc", "method": "add", "x": _Exploit(str(marker))}
        )
        await client.send_message("server", Message(REQUEST_PREFIX + payload, ttl=5))
        with anyio.fail_after(10):
            assert await rpc.get_proxy("server", "svc").add(1, 1) == 2
        assert not marker.exists()
        assert service.calls == 1


async def test_pickle_serializer_and_plain_messages_pass_through() -> None:
    service = Service()
    async with pair(service, pickler=pickle) as (_, client, server_rpc, rpc):
        with anyio.fail_after(10):
            assert await rpc.get_proxy("server", "svc").echo((1, b"x")) == (1, b"x")
            await client.send_message("server", Message(b"not rpc", ttl=5))
            ident, message = await server_rpc.receive()
        assert (ident, message.data) == ("client", b"not rpc")


class Gate:
    """A synchronous method that blocks until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.changed = threading.Condition()
        self.running = self.most = self.done = 0

    @as_signal
    def wait(self) -> None:
        with self.changed:
            self.running += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
        assert self.release.wait(20)
        with self.changed:
            self.running -= 1
            self.done += 1
            self.changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(predicate, 20)

        assert await anyio.to_thread.run_sync(wait)


async def test_server_threads_are_bounded_by_its_own_limiter() -> None:
    gate = Gate()
    async with (
        Messaging("server") as server,
        Messaging("client") as client,
        Rpc(server, max_threads=2) as server_rpc,
        Rpc(client) as client_rpc,
    ):
        server_rpc.register_object(gate, "gate")
        _, port = await server.add_listener(("127.0.0.1", 0))
        await client.add_connector(("127.0.0.1", port))
        with anyio.fail_after(20):
            await client.wait_connected("server")
            proxy = client_rpc.get_proxy("server", "gate")
            proxy.wait.as_signal(10)
            for _ in range(6):
                await proxy.wait()
            await gate.wait_until(lambda: gate.running == 2)
            # the default thread limiter (storage, user code) is untouched
            assert anyio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            gate.release.set()
            await gate.wait_until(lambda: gate.done == 6)
        assert gate.most == 2
    with pytest.raises(ValueError, match="max_threads"):
        Rpc(server, max_threads=0)
