"""RPC over messages: the format and the rules both implementations share.

A request is a message whose payload is ``b"rpcreq"`` + serialized
parameters, a reply ``b"rpcrep"`` + serialized result — snakeMQ 1.6's layout,
so ``pickler=pickle`` interoperates with 1.6 RPC peers.  Parameters are a
dict: ``command`` (``"call"`` or ``"signal"``), ``object``, ``method``,
``args``, ``kwargs`` and, for calls, ``req_id``.  A reply is
``{"req_id", "ok", "return"}`` or ``{"req_id", "ok": False, "exception",
"exception_format"}``.

The default serializer, ``JsonPickler``, never runs code while decoding
(pickle does, which is why 1.6's default was a remote code execution hole).
``ReplyMemory`` makes a call re-sent after a reconnect run at most once.
The sync (``snakemq.rpc``) and async (``snakemq_anyio.rpc``) packages only
add threads or tasks around these pieces.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import threading
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

REQUEST_PREFIX = b"rpcreq"
REPLY_PREFIX = b"rpcrep"
METHOD_RPC_AS_SIGNAL_ATTR = "__snakemw_rpc_as_signal"
REMOTE_TRACEBACK_ATTR = "__remote_traceback__"
REPLY_MEMORY = 10_000
"""How many recent replies a server remembers to answer re-sent calls."""

log = logging.getLogger("snakemq.rpc")


class Error(Exception):
    """Base of the RPC errors."""


class NoInstanceError(Error):
    """The requested object is not registered on the server."""


class NoMethodError(Error):
    """The requested method does not exist (or is private) on the object."""


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
    """What RPC needs from a serializer (the ``pickle`` module qualifies)."""

    @property
    def PickleError(self) -> type[Exception]: ...

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


#: Keys that tag an encoded value in ``JsonPickler``'s JSON; a dict of the
#: program's with one of them is sent wrapped in ``{"__dict__": ...}``.
_TAGS = frozenset({"__bytes__", "__exception__", "__dict__"})


class JsonPickler:
    """The safe default serializer: JSON, bytes as tagged base64, tuples as
    lists, exceptions as (type name, message).  Decoding never runs code.
    A dict whose keys could read as a tag travels escaped, so every JSON
    value the program sends comes back as it was."""

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
            encoded = {k: cls._encode(v) for k, v in obj.items()}
            if any(k in _TAGS for k in obj):
                # a user's dict that could read as a tag travels escaped
                return {"__dict__": encoded}
            return encoded
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
            if len(obj) == 1 and isinstance(obj.get("__dict__"), dict):
                return {k: cls._decode(v) for k, v in obj["__dict__"].items()}
            if "__bytes__" in obj and len(obj) == 1:
                return base64.b64decode(obj["__bytes__"])
            if "__exception__" in obj:
                return rebuild_exception(
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


def rebuild_exception(type_name: str, module: str, message: str) -> BaseException:
    """A builtin exception type comes back as itself; anything else as
    ``RemoteError`` (never import or instantiate a class named by a peer)."""
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


def req_key(req_id: Any) -> str:
    """A request id as text (1.6 sends bytes, JSON carries hex)."""
    return req_id.hex() if isinstance(req_id, bytes) else str(req_id)


def new_req_id(pickler: Pickler, raw: bytes) -> Any:
    """The request id to put on the wire: bytes for pickle (1.6 layout), hex
    text for JSON."""
    return raw.hex() if isinstance(pickler, JsonPickler) else raw


def decode_request(pickler: Pickler, payload: bytes) -> dict[str, Any]:
    """Decode a request payload (after the prefix).

    Raises:
        ValueError: not a well-formed request.
    """
    try:
        params = pickler.loads(payload)
    except Exception as exc:
        raise ValueError(f"cannot decode the request: {exc!r}") from None
    if not isinstance(params, dict) or params.get("command") not in ("call", "signal"):
        raise ValueError("not an RPC request (needs a dict with command call/signal)")
    if not isinstance(params.get("object"), str) or not isinstance(params.get("method"), str):
        raise ValueError("RPC request needs str object and method names")
    if params["command"] == "call" and "req_id" not in params:
        raise ValueError("RPC call without req_id")
    return params


def admit_request(
    pickler: Pickler, memory: ReplyMemory, ident: str, payload: bytes
) -> tuple[dict[str, Any] | None, bytes | None]:
    """The server's intake rule: decode a request from ``ident`` and keep a
    call to at most one execution.

    Returns ``(params, None)`` to serve it (a call is now running in
    ``memory``; its ``Invocation`` settles it), ``(None, reply)`` for a
    repeat of a call already answered (send ``reply`` again), ``(None,
    None)`` for a repeat of a call still running (ignore it).

    Raises:
        ValueError: not a well-formed request (log it and drop it).
    """
    params = decode_request(pickler, payload)
    if params["command"] == "call":
        state = memory.begin(ident, params["req_id"])
        if state == "running":
            log.debug("ident=%r: repeat of a running call ignored", ident)
            return None, None
        if isinstance(state, bytes):
            log.debug("ident=%r: repeat answered from memory", ident)
            return None, state
    return params, None


def new_call(pickler: Pickler, params: dict[str, Any]) -> str:
    """Give a call's ``params`` a fresh request id; return the key
    ``decode_reply()`` will name its reply by."""
    raw_id = uuid.uuid4().bytes
    params["req_id"] = new_req_id(pickler, raw_id)
    return raw_id.hex()


def no_reply_error(
    ident: str, params: Mapping[str, Any], timeout: float | None, sent: bool
) -> CallError:
    """What a call that got no reply within ``timeout`` raises:
    ``NotConnected`` when the request never went out, else ``PartialCall``
    (it may have run)."""
    return (PartialCall if sent else NotConnected)(
        f"no reply from {ident!r} to {params['object']}.{params['method']}() within {timeout} s"
    )


def resolve_method(
    instances: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[Callable[..., Any], bool]:
    """Find the method a request names; return it and whether the caller
    expects a reply with the exception if it fails.

    Raises:
        NoInstanceError, NoMethodError: nothing callable by that name
            (names starting with ``_`` are never callable remotely).
    """
    try:
        instance = instances[params["object"]]
    except KeyError:
        raise NoInstanceError(params["object"]) from None
    name = params["method"]
    if name.startswith("_"):
        raise NoMethodError(name)
    method = getattr(instance, name, None)
    if method is None or not callable(method):
        raise NoMethodError(name)
    is_call = params["command"] == "call"
    is_signal_method = hasattr(method, METHOD_RPC_AS_SIGNAL_ATTR)
    if is_call == is_signal_method:
        import warnings

        warnings.warn(f"wrong command match for {method!r}", SignalCallWarning, stacklevel=2)
    return method, is_call and not is_signal_method


class RemoteMethodBase:
    """What the sync and async ``RemoteMethod`` share: the call/signal
    settings and the layout of the request they send."""

    def __init__(self, object_name: str, name: str) -> None:
        self.object_name = object_name
        self.name = name
        self.call_timeout: float | None = None
        self.signal_timeout: float | None = None

    def as_signal(self, timeout: float | None = 0) -> None:
        """Call this method as a signal: no reply; the request waits for the
        peer up to ``timeout`` seconds (its TTL).  ``None`` makes it regular."""
        self.signal_timeout = timeout

    def set_timeout(self, timeout: float | None) -> None:
        """Seconds a regular call waits (for the peer and for the reply)."""
        self.call_timeout = timeout

    def request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The request parameters (the caller adds ``req_id`` to a call)."""
        return {
            "command": "call" if self.signal_timeout is None else "signal",
            "object": self.object_name,
            "method": self.name,
            "args": args,
            "kwargs": kwargs,
        }


class Invocation:
    """One request being served: what to call, and the reply rules.

    ``Invocation.start()`` resolves the method (or says what to answer when
    there is none); the implementation runs ``method(*args, **kwargs)`` in
    its own way (thread or task) and hands the outcome to ``returned()`` or
    ``failed()``, which give the reply payload to send (``None``: no reply)
    and settle the at-most-once memory.
    """

    def __init__(
        self,
        ident: str,
        params: Mapping[str, Any],
        method: Callable[..., Any] | None,
        transfer: bool,
        pickler: Pickler,
        memory: ReplyMemory,
    ) -> None:
        self.ident = ident
        self.params = params
        self.method = method
        self.is_call = params["command"] == "call"
        self.transfer = transfer
        self.args: tuple[Any, ...] = tuple(params.get("args", ()))
        self.kwargs: dict[str, Any] = dict(params.get("kwargs", {}))
        self._pickler = pickler
        self._memory = memory

    @classmethod
    def start(
        cls,
        ident: str,
        params: Mapping[str, Any],
        instances: Mapping[str, Any],
        pickler: Pickler,
        memory: ReplyMemory,
    ) -> Invocation:
        """Resolve the request's method; ``method`` is ``None`` when there is
        nothing to call (``failed()`` then already knows why)."""
        try:
            method, transfer = resolve_method(instances, params)
        except Error as exc:
            invocation = cls(ident, params, None, True, pickler, memory)
            invocation.refusal = exc
            return invocation
        return cls(ident, params, method, transfer, pickler, memory)

    refusal: Error | None = None
    """Why there is no method to call (``NoInstanceError``/``NoMethodError``)."""

    def returned(self, result: Any) -> bytes | None:
        """The method returned ``result``: the reply to send, if any."""
        reply = (
            encode_return(self._pickler, self.params["req_id"], result) if self.is_call else None
        )
        self._settle(reply)
        return reply

    def failed(self, exc: BaseException, transfer_exceptions: bool = True) -> bytes | None:
        """The method raised ``exc`` (or there was none): the error reply for
        a caller that waits for one; otherwise ``None`` (log it)."""
        reply = None
        if self.is_call and transfer_exceptions and self.transfer:
            reply = encode_exception(self._pickler, self.params["req_id"], exc)
        self._settle(reply)
        return reply

    def abandon(self) -> None:
        """The call was cancelled before it finished: a repeat may run it."""
        self._settle(None)

    def _settle(self, reply: bytes | None) -> None:
        if self.is_call:
            self._memory.finish(self.ident, self.params["req_id"], reply)


def encode_return(pickler: Pickler, req_id: Any, result: Any) -> bytes:
    """The reply payload for a result (an error reply if it cannot be encoded)."""
    try:
        return REPLY_PREFIX + pickler.dumps({"ok": True, "return": result, "req_id": req_id})
    except Exception as exc:
        return encode_exception(pickler, req_id, exc)


def encode_exception(pickler: Pickler, req_id: Any, exc: BaseException) -> bytes:
    """The reply payload for an exception raised by the method."""
    exc_format = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data = {"req_id": req_id, "ok": False, "exception": exc, "exception_format": exc_format}
    try:
        return REPLY_PREFIX + pickler.dumps(data)
    except Exception:
        data["exception"] = RemoteError(type(exc).__qualname__, str(exc), exc_format)
        try:
            return REPLY_PREFIX + pickler.dumps(data)
        except Exception:  # a pickler that cannot even carry RemoteError
            data["exception"] = RuntimeError(f"{type(exc).__qualname__}: {exc}")
            return REPLY_PREFIX + pickler.dumps(data)


def decode_reply(pickler: Pickler, payload: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a reply payload (after the prefix); return ``(req key, reply)``.

    Raises:
        ValueError: not a well-formed reply.
    """
    try:
        reply = pickler.loads(payload)
        return req_key(reply["req_id"]), reply
    except Exception as exc:
        raise ValueError(f"cannot decode the reply: {exc!r}") from None


def reply_result(reply: Mapping[str, Any]) -> Any:
    """Return the result a reply carries, or raise the exception it carries
    (with the remote traceback as ``__remote_traceback__``)."""
    if reply.get("ok"):
        return reply.get("return")
    exc = reply.get("exception")
    if not isinstance(exc, BaseException):
        exc = RemoteError("Exception", str(exc))
    setattr(exc, REMOTE_TRACEBACK_ATTR, reply.get("exception_format", ""))
    raise exc


class ReplyMemory:
    """At-most-once execution for a server: which calls run, which replies
    were sent.  Thread-safe.

    ``begin(ident, req_id)`` returns ``"run"`` for a new call (execute it),
    ``"running"`` for a repeat of a call still executing (ignore it), or the
    remembered reply payload to send again.  ``finish()`` stores the reply.
    """

    def __init__(self, size: int = REPLY_MEMORY) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._replies: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def begin(self, ident: str, req_id: Any) -> str | bytes:
        key = (ident, req_key(req_id))
        with self._lock:
            if key in self._running:
                return "running"
            cached = self._replies.get(key)
            if cached is not None:
                return cached
            self._running.add(key)
            return "run"

    def finish(self, ident: str, req_id: Any, reply: bytes | None) -> None:
        key = (ident, req_key(req_id))
        with self._lock:
            self._running.discard(key)
            if reply is not None:
                self._replies[key] = reply
                while len(self._replies) > self._size:
                    self._replies.popitem(last=False)


def encode_request(pickler: Pickler, params: Mapping[str, Any]) -> bytes:
    """The payload of a request message: ``b"rpcreq"`` + serialized ``params``."""
    return REQUEST_PREFIX + pickler.dumps(dict(params))


class PendingCall:
    """One call a client waits on (made by ``PendingCalls.start``)."""

    __slots__ = ("ident", "key", "params", "reply", "sent_on")

    def __init__(self, ident: str, key: str, params: dict[str, Any]) -> None:
        self.ident = ident
        self.key = key
        self.params = params
        self.reply: dict[str, Any] | None = None
        self.sent_on: int | None = None  # the connection to ``ident`` it went out on


class PendingCalls:
    """The client's side of calls: which wait for a reply, and when a request
    goes out.

    The resend rule: a call is sent on every connection to its peer that it
    was not yet sent on — so a call whose request or reply was lost with a
    connection is sent again after the reconnect, and the server's
    ``ReplyMemory`` runs it at most once.  Connections are counted per peer
    (``peer_connected``).  Not thread-safe: the sync client calls it under
    its lock, the async one from its event loop.
    """

    def __init__(self, pickler: Pickler) -> None:
        self.pickler = pickler
        self._calls: dict[str, PendingCall] = {}
        self._connections: dict[str, int] = {}  # connections seen per ident

    def peer_connected(self, ident: str) -> None:
        """A new connection to ``ident``: calls waiting for it are resent."""
        self._connections[ident] = self._connections.get(ident, 0) + 1

    def start(self, ident: str, params: dict[str, Any]) -> PendingCall:
        """Register a call to ``ident`` (``params`` get a fresh request id)."""
        call = PendingCall(ident, new_call(self.pickler, params), params)
        self._calls[call.key] = call
        return call

    def request_to_send(self, call: PendingCall, connected: bool) -> bytes | None:
        """The request payload to send now (with TTL 0), or ``None`` when the
        peer is away or the request already went out on this connection."""
        connection = self._connections.get(call.ident)
        if not connected or call.sent_on == connection:
            return None
        call.sent_on = connection
        return encode_request(self.pickler, call.params)

    def reply_received(self, payload: bytes) -> PendingCall | None:
        """Take a reply payload (after the prefix); return the call it
        answers (now with ``reply`` set), ``None`` if none waits for it.

        Raises:
            ValueError: not a well-formed reply.
        """
        key, reply = decode_reply(self.pickler, payload)
        call = self._calls.get(key)
        if call is None or call.reply is not None:
            return None
        call.reply = reply
        return call

    def finish(self, call: PendingCall) -> Any:
        """Forget ``call``; return its result or raise its exception
        (``reply_result``).  Its reply must have come."""
        self._calls.pop(call.key, None)
        assert call.reply is not None
        return reply_result(call.reply)

    def abandon(self, call: PendingCall) -> None:
        """Forget ``call`` (it timed out or its caller went away)."""
        self._calls.pop(call.key, None)

    def timed_out(self, call: PendingCall, timeout: float | None) -> CallError:
        """Forget ``call``; the error its caller raises (``no_reply_error``)."""
        self.abandon(call)
        return no_reply_error(call.ident, call.params, timeout, call.sent_on is not None)

    def waiting(self) -> set[str]:
        """The keys of the calls still waiting for their reply."""
        return {key for key, call in self._calls.items() if call.reply is None}

    def __len__(self) -> int:
        return len(self._calls)
