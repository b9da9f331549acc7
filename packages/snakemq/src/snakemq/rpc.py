"""Remote procedure calls over snakemq messaging (snakeMQ 1.6 API, without its defects).

The format, the safe default serializer and the at-most-once bookkeeping are
in ``snakemq_proto.rpc`` (shared with ``snakemq_anyio.rpc``); this module adds
the 1.6 classes: server methods run in threads of their own, client calls
block the calling thread.

Differences from 1.6:

* The default serializer is ``JsonPickler``: it never unpickles network data
  (exceptions come back as the builtin type or as ``RemoteError``).  Pass
  ``pickler=pickle`` only for trusted peers (and to talk to 1.6 RPC peers).
* A call re-sent after a reconnect (same request id) executes at most once.
* Requests that cannot be decoded are logged and dropped; they never kill
  the loop.  Names starting with ``_`` cannot be called remotely.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from snakemq_proto.rpc import (
    METHOD_RPC_AS_SIGNAL_ATTR,
    REMOTE_TRACEBACK_ATTR,
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
    SignalCallWarning,
    admit_request,
    as_signal,
    encode_request,
)

from snakemq.message import Message
from snakemq.messaging import ReceiveHook

__all__ = [
    "METHOD_RPC_AS_SIGNAL_ATTR",
    "REMOTE_TRACEBACK_ATTR",
    "REPLY_PREFIX",
    "REQUEST_PREFIX",
    "CallError",
    "Error",
    "JsonPickler",
    "NoInstanceError",
    "NoMethodError",
    "NotConnected",
    "PartialCall",
    "Pickler",
    "RemoteError",
    "RemoteMethod",
    "RpcClient",
    "RpcInstProxy",
    "RpcServer",
    "SignalCallWarning",
    "as_signal",
]

log_server = logging.getLogger("snakemq.rpc.server")
log_client = logging.getLogger("snakemq.rpc.client")


class RpcServer:
    """Serves registered objects to remote ``RpcClient`` objects.

    Methods run in worker threads (not in the link loop), as in 1.6, but at
    most ``max_threads`` at once (1.6 started one thread per request, without
    limit); further requests wait in order, at most ``max_pending`` of them.
    A request beyond that is answered with ``RuntimeError`` (the server is
    busy) without running.

    Args:
        receive_hook: the ``ReceiveHook`` of the messaging to serve on.
        pickler: the serializer; the default never unpickles network data.
        max_threads: worker threads running methods at once (>= 1).
        max_pending: requests waiting for a worker before new ones are refused.
    """

    def __init__(
        self,
        receive_hook: ReceiveHook,
        pickler: Pickler | None = None,
        *,
        max_threads: int = 16,
        max_pending: int = 10_000,
    ) -> None:
        for name, value, low in (("max_threads", max_threads, 1), ("max_pending", max_pending, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.receive_hook = receive_hook
        self.pickler: Pickler = pickler if pickler is not None else JsonPickler()
        self.instances: dict[str, Any] = {}
        self.transfer_exceptions = True
        self.max_threads = max_threads
        self.max_pending = max_pending
        self._memory = ReplyMemory()
        self._work: deque[tuple[str, dict[str, Any]]] = deque()
        self._work_lock = threading.Lock()
        self._workers = 0
        self._busy = 0
        self._idle = 0
        self._work_ready = threading.Condition(self._work_lock)
        receive_hook.register(REQUEST_PREFIX, self.on_recv)

    def register_object(self, instance: Any, name: str) -> None:
        self.instances[name] = instance

    def unregister_object(self, name: str) -> None:
        del self.instances[name]

    def get_registered_objects(self) -> dict[str, Any]:
        return self.instances

    def on_recv(self, conn_id: str, ident: str, message: Message) -> None:
        try:
            params, repeat = admit_request(
                self.pickler, self._memory, ident, message.data[len(REQUEST_PREFIX) :]
            )
        except ValueError as exc:
            log_server.error("ident=%r: refused an RPC request: %s", ident, exc)
            return
        if repeat is not None:
            self._send(ident, repeat)
        if params is None:
            return
        with self._work_lock:
            # workers started but not yet running a call will take one each
            free = self._workers - self._busy
            if len(self._work) - free >= self.max_pending and self._workers >= self.max_threads:
                busy = True
            else:
                busy = False
                self._work.append((ident, params))
                if self._idle:
                    self._work_ready.notify()
                elif self._workers < self.max_threads:
                    self._workers += 1
                    threading.Thread(target=self._worker, name="snakemq-rpc", daemon=True).start()
        if busy:
            self._refuse_busy(ident, params)

    def _worker(self) -> None:
        """Run queued calls; exit after a second with nothing to do."""
        while True:
            with self._work_lock:
                if not self._work:
                    self._idle += 1
                    self._work_ready.wait(1.0)
                    self._idle -= 1
                    if not self._work:
                        self._workers -= 1
                        return
                ident, params = self._work.popleft()
                self._busy += 1
            try:
                self.call_method(ident, params)
            except Exception:
                log_server.exception("ident=%r: RPC call failed", ident)
            finally:
                with self._work_lock:
                    self._busy -= 1

    def _refuse_busy(self, ident: str, params: dict[str, Any]) -> None:
        log_server.error(
            "ident=%r: RPC server busy (%d calls running, %d waiting): refused %r.%r",
            ident,
            self.max_threads,
            self.max_pending,
            params.get("object"),
            params.get("method"),
        )
        call = Invocation.start(ident, params, {}, self.pickler, self._memory)
        reply = call.failed(
            RuntimeError(
                f"RPC server busy: {self.max_threads} calls running and {self.max_pending} "
                "waiting; try again later"
            )
        )
        if reply is not None:
            self._send(ident, reply)

    def call_method(self, ident: str, params: dict[str, Any]) -> None:
        call = Invocation.start(ident, params, self.instances, self.pickler, self._memory)
        if call.method is None:
            assert call.refusal is not None
            reply = call.failed(call.refusal)
        else:
            try:
                result = call.method(*call.args, **call.kwargs)
            except Exception as exc:
                reply = call.failed(exc, self.transfer_exceptions)
                if reply is None:
                    log_server.exception("ident=%r: RPC method %r raised", ident, params["method"])
            else:
                reply = call.returned(result)
        if reply is None and call.refusal is not None:
            log_server.error("ident=%r: signal refused: %r", ident, call.refusal)
        if reply is not None:
            self._send(ident, reply)

    def _send(self, ident: str, raw: bytes) -> None:
        self.receive_hook.messaging.send_message(ident, Message(raw, ttl=0))


class RemoteMethod(RemoteMethodBase):
    """A method of a remote object; calling it performs the RPC."""

    def __init__(self, iproxy: RpcInstProxy, name: str) -> None:
        super().__init__(iproxy._name, name)
        self.iproxy = iproxy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = self.request(args, kwargs)
        try:
            return self.iproxy._client.remote_request(self.iproxy._remote_ident, self, params)
        except CallError:
            raise
        except Exception as exc:
            handler = self.iproxy._client.exception_handler
            if handler is None:
                raise
            handler(exc)
            return None


class RpcInstProxy:
    """A proxy of a remote object: attribute access gives ``RemoteMethod`` objects."""

    def __init__(self, client: RpcClient, remote_ident: str, name: str) -> None:
        self._client = client
        self._remote_ident = remote_ident
        self._name = name
        self._methods: dict[str, RemoteMethod] = {}

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        with self._client.lock:
            method = self._methods.get(name)
            if method is None:
                method = self._methods[name] = RemoteMethod(self, name)
            return method

    def __repr__(self) -> str:
        return f"<RpcInstProxy remote_ident={self._remote_ident!r} name={self._name!r}>"


class RpcClient:
    """Calls methods of objects registered on remote ``RpcServer`` objects.

    Calls block the calling thread (never call from the link loop thread).

    Args:
        receive_hook: the ``ReceiveHook`` of the messaging to call through.
        pickler: the serializer; the default never unpickles network data.
    """

    def __init__(self, receive_hook: ReceiveHook, pickler: Pickler | None = None) -> None:
        self.receive_hook = receive_hook
        self.pickler: Pickler = pickler if pickler is not None else JsonPickler()
        self.exception_handler: Callable[[Exception], None] | None = None
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.connected: dict[str, bool] = {}
        self._calls = PendingCalls(self.pickler)  # the resend rule lives there
        receive_hook.register(REPLY_PREFIX, self.on_recv)
        receive_hook.messaging.on_connect.add(self.on_connect)
        receive_hook.messaging.on_disconnect.add(self.on_disconnect)

    @property
    def waiting_for_result(self) -> set[str]:
        """Keys of the calls waiting for a reply (snakeMQ 1.6 had this set)."""
        with self.lock:
            return self._calls.waiting()

    def get_proxy(self, remote_ident: str, name: str) -> RpcInstProxy:
        """A proxy of the object ``name`` registered on peer ``remote_ident``."""
        return RpcInstProxy(self, remote_ident, name)

    def on_connect(self, conn_id: str, ident: str) -> None:
        with self.cond:
            self.connected[ident] = True
            self._calls.peer_connected(ident)
            self.cond.notify_all()

    def on_disconnect(self, conn_id: str, ident: str) -> None:
        with self.cond:
            self.connected[ident] = False
            self.cond.notify_all()

    def on_recv(self, conn_id: str, ident: str, message: Message) -> None:
        with self.cond:
            try:
                call = self._calls.reply_received(message.data[len(REPLY_PREFIX) :])
            except ValueError as exc:
                log_client.error("ident=%r: refused an RPC reply: %s", ident, exc)
                return
            if call is not None:
                self.cond.notify_all()

    def send_params(self, remote_ident: str, params: dict[str, Any], ttl: float | None) -> None:
        raw = encode_request(self.pickler, params)
        self.receive_hook.messaging.send_message(remote_ident, Message(raw, ttl=ttl))

    def remote_request(
        self, remote_ident: str, method: RemoteMethod, params: dict[str, Any]
    ) -> Any:
        if method.signal_timeout is None:
            return self.call_regular(remote_ident, method, params)
        self.send_params(remote_ident, params, method.signal_timeout)
        return None

    def call_regular(self, remote_ident: str, method: RemoteMethod, params: dict[str, Any]) -> Any:
        deadline = None if method.call_timeout is None else time.monotonic() + method.call_timeout
        calls = self._calls
        messaging = self.receive_hook.messaging
        with self.cond:
            call = calls.start(remote_ident, params)
            try:
                while call.reply is None:
                    request = calls.request_to_send(call, bool(self.connected.get(remote_ident)))
                    if request is not None:
                        messaging.send_message(remote_ident, Message(request, ttl=0))
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise calls.timed_out(call, method.call_timeout)
                    self.cond.wait(remaining)
                return calls.finish(call)
            finally:
                calls.abandon(call)
