"""Remote procedure calls over snakemq messaging (snakeMQ 1.6 API, without its defects).

A request is a message whose payload starts with ``b"rpcreq"``, a reply one
starting with ``b"rpcrep"``, followed by the serialized parameters — the
layout of snakeMQ 1.6, so ``pickler=pickle`` talks to 1.6 RPC peers.

Differences from 1.6:

* The default serializer is ``JsonPickler``: it never unpickles network data
  (payloads are JSON, bytes travel as base64, exceptions travel as their type
  name, message and remote traceback and come back as the builtin type or as
  ``RemoteError``).  Pass ``pickler=pickle`` only for peers you trust.
* A call re-sent after a reconnect (same request id) executes at most once:
  the server remembers the replies of recent requests and answers a repeat
  from that memory, and ignores a repeat of a call still running.
* Requests that cannot be decoded are logged and answered with an error when
  possible; they never kill the loop.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import sys
import threading
import time
import traceback
import uuid as uuid_module
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from snakemq.message import Message
from snakemq.messaging import ReceiveHook

REQUEST_PREFIX = b"rpcreq"
REPLY_PREFIX = b"rpcrep"
METHOD_RPC_AS_SIGNAL_ATTR = "__snakemw_rpc_as_signal"
REMOTE_TRACEBACK_ATTR = "__remote_traceback__"
REPLY_MEMORY = 10_000
"""How many recent replies a server remembers to answer re-sent calls."""

log_server = logging.getLogger("snakemq.rpc.server")
log_client = logging.getLogger("snakemq.rpc.client")


class Error(Exception):
    """Base of the RPC errors."""


class NoInstanceError(Error):
    """The requested object is not registered on the server."""


class NoMethodError(Error):
    """The requested method does not exist on the registered object."""


class SignalCallWarning(Warning):
    """A signal method was called normally or a regular method as a signal."""


class CallError(Error):
    """The call could not be completed."""


class NotConnected(CallError):
    """The peer was not connected within the call's timeout."""


class PartialCall(CallError):
    """The request was sent but no reply came within the call's timeout."""


class RemoteError(Error):
    """An exception raised on the server whose type is not a builtin one.

    Attributes:
        type_name: the qualified name of the remote exception's class.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class Pickler(Protocol):
    """What RPC needs from a serializer (``pickle`` qualifies)."""

    @property
    def PickleError(self) -> type[Exception]: ...

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonPickler:
    """A safe serializer: JSON with tagged bytes, tuples kept as lists, and
    exceptions reduced to (type name, message).  Decoding never runs code."""

    class PickleError(ValueError):
        """Data cannot be encoded or decoded."""

    @classmethod
    def _encode(cls, obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray | memoryview):
            return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, BaseException):
            return {
                "__exception__": type(obj).__qualname__,
                "module": type(obj).__module__,
                "message": str(obj),
            }
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise cls.PickleError("JsonPickler supports only str dictionary keys")
            return {k: cls._encode(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [cls._encode(v) for v in obj]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise cls.PickleError(
            f"JsonPickler cannot send a {type(obj).__name__}; use JSON types, bytes, "
            "or pass pickler=pickle for trusted peers"
        )

    @classmethod
    def _decode(cls, obj: Any) -> Any:
        if isinstance(obj, dict):
            if "__bytes__" in obj and len(obj) == 1:
                return base64.b64decode(obj["__bytes__"])
            if "__exception__" in obj:
                return _rebuild_exception(
                    str(obj["__exception__"]), str(obj.get("module")), str(obj.get("message"))
                )
            return {k: cls._decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [cls._decode(v) for v in obj]
        return obj

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(self._encode(obj), separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise self.PickleError(str(exc)) from exc

    def loads(self, data: bytes) -> Any:
        try:
            return self._decode(json.loads(data))
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise self.PickleError(f"not a valid RPC payload: {exc}") from exc


def _rebuild_exception(type_name: str, module: str, message: str) -> BaseException:
    if module == "builtins":
        cls = getattr(builtins, type_name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except Exception:  # an exotic constructor signature
                pass
    return RemoteError(type_name, message)


def as_signal(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a server method as a signal (no reply is sent).  The client must
    mark it too, with ``proxy.method.as_signal()``."""
    setattr(method, METHOD_RPC_AS_SIGNAL_ATTR, True)
    return method


def _req_key(req_id: Any) -> str:
    return req_id.hex() if isinstance(req_id, bytes) else str(req_id)


class RpcServer:
    """Serves registered objects to remote ``RpcClient``s.

    Methods run in a thread of their own (not in the link loop), as in 1.6.

    Args:
        receive_hook: the ``ReceiveHook`` of the messaging to serve on.
        pickler: the serializer; the default never unpickles network data.
    """

    def __init__(self, receive_hook: ReceiveHook, pickler: Pickler | None = None) -> None:
        self.receive_hook = receive_hook
        self.pickler: Pickler = pickler if pickler is not None else JsonPickler()
        self.instances: dict[str, Any] = {}
        self.transfer_exceptions = True
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._replies: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        receive_hook.register(REQUEST_PREFIX, self.on_recv)

    def register_object(self, instance: Any, name: str) -> None:
        self.instances[name] = instance

    def unregister_object(self, name: str) -> None:
        del self.instances[name]

    def get_registered_objects(self) -> dict[str, Any]:
        return self.instances

    def on_recv(self, conn_id: str, ident: str, message: Message) -> None:
        try:
            params = self.pickler.loads(message.data[len(REQUEST_PREFIX) :])
            command = params["command"]
            if command not in ("call", "signal"):
                raise ValueError(f"unknown RPC command {command!r}")
        except Exception as exc:
            log_server.error(
                "ident=%s: refused an RPC request that cannot be decoded: %r", ident, exc
            )
            return
        if command == "call":
            key = (ident, _req_key(params.get("req_id")))
            with self._lock:
                if key in self._running:
                    log_server.debug("ident=%s req=%s: repeat of a running call ignored", *key)
                    return
                cached = self._replies.get(key)
                if cached is None:
                    self._running.add(key)
            if cached is not None:
                log_server.debug("ident=%s req=%s: repeat answered from memory", *key)
                self._send_raw(ident, cached)
                return
        threading.Thread(
            target=self.call_method,
            name=f"snakemq-rpc;{params.get('object')};{params.get('method')}",
            args=(ident, params),
            daemon=True,
        ).start()

    def call_method(self, ident: str, params: dict[str, Any]) -> None:
        is_call = params["command"] == "call"
        transfer_exception = is_call
        try:
            try:
                instance = self.instances[params["object"]]
            except KeyError:
                raise NoInstanceError(params["object"]) from None
            name = params["method"]
            if not isinstance(name, str) or name.startswith("_"):
                raise NoMethodError(name)
            try:
                method = getattr(instance, name)
            except AttributeError:
                raise NoMethodError(name) from None
            is_signal_method = hasattr(method, METHOD_RPC_AS_SIGNAL_ATTR)
            if is_call == is_signal_method:
                warnings.warn(
                    f"wrong command match for {method!r}", SignalCallWarning, stacklevel=1
                )
            transfer_exception = is_call and not is_signal_method
            ret = method(*params.get("args", ()), **params.get("kwargs", {}))
            if is_call:
                self.send_return(ident, params["req_id"], ret)
        except Exception as exc:
            if self.transfer_exceptions and transfer_exception:
                self.send_exception(ident, params["req_id"], exc)
            else:
                log_server.exception("ident=%s: RPC method failed", ident)
        finally:
            if is_call:
                with self._lock:
                    self._running.discard((ident, _req_key(params.get("req_id"))))

    def send_exception(self, ident: str, req_id: Any, exc: BaseException) -> None:
        exc_format = "".join(traceback.format_exception(*sys.exc_info()))
        data = {"req_id": req_id, "ok": False, "exception": exc, "exception_format": exc_format}
        try:
            self.send(ident, data)
        except self.pickler.PickleError:
            self.send(
                ident,
                {
                    "req_id": req_id,
                    "ok": False,
                    "exception": RemoteError(type(exc).__qualname__, str(exc), exc_format),
                    "exception_format": exc_format,
                },
            )

    def send_return(self, ident: str, req_id: Any, res: Any) -> None:
        try:
            self.send(ident, {"ok": True, "return": res, "req_id": req_id})
        except self.pickler.PickleError as exc:
            self.send_exception(ident, req_id, exc)

    def send(self, ident: str, data: dict[str, Any]) -> None:
        try:
            raw = REPLY_PREFIX + self.pickler.dumps(data)
        except TypeError as exc:
            raise self.pickler.PickleError(str(exc)) from exc
        key = (ident, _req_key(data.get("req_id")))
        with self._lock:
            self._replies[key] = raw
            while len(self._replies) > REPLY_MEMORY:
                self._replies.popitem(last=False)
        self._send_raw(ident, raw)

    def _send_raw(self, ident: str, raw: bytes) -> None:
        self.receive_hook.messaging.send_message(ident, Message(raw, ttl=0))


class RemoteMethod:
    """A method of a remote object; calling it performs the RPC."""

    def __init__(self, iproxy: RpcInstProxy, name: str) -> None:
        self.iproxy = iproxy
        self.name = name
        self.call_timeout: float | None = None
        self.signal_timeout: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params = {
            "command": "call" if self.signal_timeout is None else "signal",
            "object": self.iproxy._name,
            "method": self.name,
            "args": args,
            "kwargs": kwargs,
        }
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

    def as_signal(self, timeout: float = 0) -> None:
        """Call this method as a signal: no reply; the request waits for the
        peer up to ``timeout`` seconds (its TTL).  ``None`` makes it regular."""
        self.signal_timeout = timeout

    def set_timeout(self, timeout: float | None) -> None:
        """Seconds a regular call waits (for the peer and for the reply)."""
        self.call_timeout = timeout


class RpcInstProxy:
    """A proxy of a remote object: attribute access gives ``RemoteMethod``s."""

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
    """Calls methods of objects registered on remote ``RpcServer``s.

    Calls block the calling thread (never call from the link loop thread).

    Args:
        receive_hook: the ``ReceiveHook`` of the messaging to call through.
        pickler: the serializer; the default never unpickles network data.
    """

    def __init__(self, receive_hook: ReceiveHook, pickler: Pickler | None = None) -> None:
        self.receive_hook = receive_hook
        self.pickler: Pickler = pickler if pickler is not None else JsonPickler()
        self.exception_handler: Callable[[Exception], None] | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.waiting_for_result: set[str] = set()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.connected: dict[str, bool] = {}
        self._generation: dict[str, int] = {}  # connections seen per ident
        receive_hook.register(REPLY_PREFIX, self.on_recv)
        receive_hook.messaging.on_connect.add(self.on_connect)
        receive_hook.messaging.on_disconnect.add(self.on_disconnect)

    def get_proxy(self, remote_ident: str, name: str) -> RpcInstProxy:
        """A proxy of the object ``name`` registered on peer ``remote_ident``."""
        return RpcInstProxy(self, remote_ident, name)

    def on_connect(self, conn_id: str, ident: str) -> None:
        with self.cond:
            self.connected[ident] = True
            self._generation[ident] = self._generation.get(ident, 0) + 1
            self.cond.notify_all()

    def on_disconnect(self, conn_id: str, ident: str) -> None:
        with self.cond:
            self.connected[ident] = False
            self.cond.notify_all()

    def on_recv(self, conn_id: str, ident: str, message: Message) -> None:
        try:
            res = self.pickler.loads(message.data[len(REPLY_PREFIX) :])
            key = _req_key(res["req_id"])
        except Exception as exc:
            log_client.error(
                "ident=%s: refused an RPC reply that cannot be decoded: %r", ident, exc
            )
            return
        with self.cond:
            if key in self.waiting_for_result:
                self.waiting_for_result.discard(key)
                self.results[key] = res
                self.cond.notify_all()

    def send_params(self, remote_ident: str, params: dict[str, Any], ttl: float | None) -> None:
        raw = REQUEST_PREFIX + self.pickler.dumps(params)
        self.receive_hook.messaging.send_message(remote_ident, Message(raw, ttl=ttl))

    def remote_request(
        self, remote_ident: str, method: RemoteMethod, params: dict[str, Any]
    ) -> Any:
        if method.signal_timeout is None:
            return self.call_regular(remote_ident, method, params)
        self.send_params(remote_ident, params, method.signal_timeout)
        return None

    def call_regular(self, remote_ident: str, method: RemoteMethod, params: dict[str, Any]) -> Any:
        req_id = uuid_module.uuid4().bytes
        if isinstance(self.pickler, JsonPickler):
            params["req_id"] = req_id.hex()
        else:
            params["req_id"] = req_id  # 1.6 layout
        key = req_id.hex()
        deadline = None if method.call_timeout is None else time.monotonic() + method.call_timeout
        sent_on: int | None = None  # the connection generation the request went out on
        with self.cond:
            self.waiting_for_result.add(key)
            try:
                while key not in self.results:
                    generation = self._generation.get(remote_ident)
                    if self.connected.get(remote_ident) and sent_on != generation:
                        # (re)send after every reconnect; the server runs it at most once
                        self.send_params(remote_ident, params, 0)
                        sent_on = generation
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise (NotConnected if sent_on is None else PartialCall)(
                            f"no reply from {remote_ident!r} to {params['object']}."
                            f"{params['method']}() within {method.call_timeout} s"
                        )
                    self.cond.wait(remaining)
                res = self.results.pop(key)
            finally:
                self.waiting_for_result.discard(key)
        if res["ok"]:
            return res["return"]
        exc = res["exception"]
        if not isinstance(exc, BaseException):
            exc = RemoteError("Exception", str(exc))
        setattr(exc, REMOTE_TRACEBACK_ATTR, res.get("exception_format", ""))
        raise exc
