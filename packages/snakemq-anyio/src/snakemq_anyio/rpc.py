"""Async RPC over ``snakemq_anyio.Messaging`` (asyncio and trio).

The format, the safe default serializer (``JsonPickler``, which never runs
code while decoding) and the at-most-once rule live in ``snakemq_proto.rpc``
and are shared with the sync ``snakemq.rpc``; this module adds tasks::

    async with Messaging("client") as m, Rpc(m) as rpc:
        await m.add_connector(("127.0.0.1", port))
        calc = rpc.get_proxy("server", "calc")
        assert await calc.add(1, 2) == 3

``Rpc`` takes over the messaging's receive stream: it handles RPC requests
and replies and passes every other message on through ``rpc.receive()``.
Coroutine methods of registered objects run as tasks; plain methods run in a
worker thread so they cannot block the event loop.  A call re-sent after a
reconnect runs at most once on the server.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from snakemq_proto import Message, PeerConnected, PeerDisconnected
from snakemq_proto.rpc import (
    REPLY_PREFIX,
    REQUEST_PREFIX,
    CallError,
    Error,
    Invocation,
    JsonPickler,
    NoInstanceError,
    NoMethodError,
    NotConnected,
    PartialCall,
    PendingCalls,
    Pickler,
    RemoteError,
    RemoteMethodBase,
    ReplyMemory,
    admit_request,
    as_signal,
    encode_request,
)

from ._messaging import Messaging
from ._wakeup import Wakeup

__all__ = [
    "CallError",
    "Error",
    "JsonPickler",
    "NoInstanceError",
    "NoMethodError",
    "NotConnected",
    "PartialCall",
    "RemoteError",
    "RemoteMethod",
    "Rpc",
    "RpcProxy",
    "as_signal",
]

log = logging.getLogger("snakemq.rpc.anyio")


class RemoteMethod(RemoteMethodBase):
    """A method of a remote object: ``await proxy.method(*args, **kwargs)``."""

    def __init__(self, proxy: RpcProxy, name: str) -> None:
        super().__init__(proxy._name, name)
        self._proxy = proxy

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = self.request(args, kwargs)
        rpc = self._proxy._rpc
        if self.signal_timeout is not None:
            await rpc._send_request(self._proxy._ident, params, self.signal_timeout)
            return None
        return await rpc._call(self._proxy._ident, params, self.call_timeout)


class RpcProxy:
    """A proxy of an object registered on a remote peer."""

    def __init__(self, rpc: Rpc, ident: str, name: str) -> None:
        self._rpc = rpc
        self._ident = ident
        self._name = name
        self._methods: dict[str, RemoteMethod] = {}

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = RemoteMethod(self, name)
        return method

    def __repr__(self) -> str:
        return f"<RpcProxy remote_ident={self._ident!r} name={self._name!r}>"


class Rpc:
    """RPC client and server on one ``Messaging``; an async context manager.

    Args:
        messaging: a running ``snakemq_anyio.Messaging``.
        pickler: the serializer; the default never unpickles network data.
            ``pickle`` interoperates with snakeMQ 1.6 RPC (trusted peers only).
        max_buffered: non-RPC messages kept for ``receive()`` before the
            pump stops taking messages from the messaging (backpressure).
        max_threads: worker threads running synchronous methods at once;
            further calls wait in order.  The limiter is this server's own, so
            slow methods never starve the storage's worker threads.
    """

    def __init__(
        self,
        messaging: Messaging,
        pickler: Pickler | None = None,
        *,
        max_buffered: int = 10_000,
        max_threads: int = 16,
    ) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"max_threads must be an int >= 1, got {max_threads!r}")
        self._threads = anyio.CapacityLimiter(max_threads)
        self.messaging = messaging
        self.pickler: Pickler = pickler if pickler is not None else JsonPickler()
        self.instances: dict[str, Any] = {}
        self._memory = ReplyMemory()
        self._calls = PendingCalls(self.pickler)  # the resend rule lives there
        self._calls_changed = Wakeup()  # a reply came or a peer (dis)connected
        self._other: deque[tuple[str, Message]] = deque()
        self._other_arrived = Wakeup()
        self._space = Wakeup()  # receive() took a message
        self._max_buffered = max_buffered
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Rpc:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        events = self.messaging.events()
        for ident in self.messaging.connected:
            self._calls.peer_connected(ident)
        self._tg.start_soon(self._watch_connections, events)
        self._tg.start_soon(self._pump)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # --------------------------------------------------------------- server

    def register_object(self, instance: Any, name: str) -> None:
        """Serve ``instance``'s public methods under ``name``."""
        self.instances[name] = instance

    def unregister_object(self, name: str) -> None:
        del self.instances[name]

    # --------------------------------------------------------------- client

    def get_proxy(self, ident: str, name: str) -> RpcProxy:
        """A proxy of the object ``name`` served by the peer ``ident``."""
        return RpcProxy(self, ident, name)

    async def receive(self) -> tuple[str, Message]:
        """The next message that is not RPC traffic."""
        while not self._other:
            await self._other_arrived.wait()
        item = self._other.popleft()
        self._space.set()
        return item

    # ------------------------------------------------------------- internal

    async def _watch_connections(self, events: Any) -> None:
        with events:
            async for event in events:
                if isinstance(event, PeerConnected | PeerDisconnected):
                    if isinstance(event, PeerConnected):
                        self._calls.peer_connected(event.ident)
                    self._calls_changed.set()

    async def _pump(self) -> None:
        async for ident, message in self.messaging:
            data = message.data
            if data.startswith(REQUEST_PREFIX):
                self._on_request(ident, data[len(REQUEST_PREFIX) :])
            elif data.startswith(REPLY_PREFIX):
                self._on_reply(ident, data[len(REPLY_PREFIX) :])
            else:
                while len(self._other) >= self._max_buffered:
                    await self._space.wait()
                self._other.append((ident, message))
                self._other_arrived.set()

    def _on_request(self, ident: str, payload: bytes) -> None:
        try:
            params, repeat = admit_request(self.pickler, self._memory, ident, payload)
        except ValueError as exc:
            log.error("ident=%r: refused an RPC request: %s", ident, exc)
            return
        assert self._tg is not None
        if repeat is not None:
            self._tg.start_soon(self._send_reply, ident, repeat)
        if params is not None:
            self._tg.start_soon(self._serve, ident, params)

    async def _serve(self, ident: str, params: dict[str, Any]) -> None:
        call = Invocation.start(ident, params, self.instances, self.pickler, self._memory)
        method = call.method
        if method is None:
            assert call.refusal is not None
            reply = call.failed(call.refusal)
        else:
            try:
                if inspect.iscoroutinefunction(method):
                    result = await method(*call.args, **call.kwargs)
                else:
                    result = await anyio.to_thread.run_sync(
                        _call_with, method, call.args, call.kwargs, limiter=self._threads
                    )
            except Exception as exc:
                reply = call.failed(exc)
                if reply is None:
                    log.exception("ident=%r: RPC method %r raised", ident, params["method"])
            except BaseException:  # cancelled
                call.abandon()
                raise
            else:
                reply = call.returned(result)
        if reply is None and call.refusal is not None:
            log.error("ident=%r: signal refused: %r", ident, call.refusal)
        if reply is not None:
            await self._send_reply(ident, reply)

    async def _send_reply(self, ident: str, reply: bytes) -> None:
        await self.messaging.send_message(ident, Message(reply, ttl=0))

    def _on_reply(self, ident: str, payload: bytes) -> None:
        try:
            call = self._calls.reply_received(payload)
        except ValueError as exc:
            log.error("ident=%r: refused an RPC reply: %s", ident, exc)
            return
        if call is not None:
            self._calls_changed.set()

    async def _send_request(self, ident: str, params: dict[str, Any], ttl: float) -> None:
        raw = encode_request(self.pickler, params)
        await self.messaging.send_message(ident, Message(raw, ttl=ttl))

    async def _call(self, ident: str, params: dict[str, Any], timeout: float | None) -> Any:
        calls = self._calls
        call = calls.start(ident, params)
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                while call.reply is None:
                    request = calls.request_to_send(call, self.messaging.is_connected(ident))
                    if request is not None:
                        await self.messaging.send_message(ident, Message(request, ttl=0))
                        continue
                    await self._calls_changed.wait()
            if scope.cancelled_caught:
                raise calls.timed_out(call, timeout)
            return calls.finish(call)
        finally:
            calls.abandon(call)


def _call_with(method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    return method(*args, **kwargs)
