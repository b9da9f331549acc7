"""A driver for the classic tutorial API (``snakemq.link`` / ``packeter`` / ``messaging``).

Both the sync package and snakeMQ 1.6 expose that API, so ``sync_peer.py`` and
``legacy16_peer.py`` are thin wrappers around this module; whatever 1.6 needs
on top of the API lives in ``legacy16_peer.py``.

Threads: the main thread reads commands; the link loop runs in a second
thread.  Every call into the implementation that is not documented as
thread-safe runs inside the loop thread (queued, then ``wakeup_poll()``, then
executed from ``on_loop_pass``).  ``send_message`` is documented as
thread-safe in the sync package and is called from the main thread there; 1.6
cannot use its SQLite storage from a second thread, so the legacy driver sends
from the loop thread too.

RPC (``rpc_setup`` / ``rpc_call`` / ``rpc_result``) uses ``snakemq.rpc``, whose
1.6 API the sync package keeps: the server serves one ``RpcTarget`` as
``"target"`` (its methods run in threads of the implementation's own), and
every client call runs in a thread of its own, because calls block until the
reply (or the call's timeout) comes.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import queue
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from _driverlib import LineChannel, Recorder, check_wait_args, log, payload, quiet_stdout

LOOP_POLL_TIMEOUT = 0.05
# a bound on _survive_legacy_socket_error: a loop that keeps failing is a failure
MAX_LEGACY_LOOP_RESTARTS = 1000

# What ``RpcTarget.sample()`` returns: bytes, a nested tuple and a set, which
# only pickle carries as themselves; the client answers with its ``repr``.
RPC_SAMPLE = (b"\x00\xff", (1, 2), {3}, 1.5, None)


class RpcTargetError(Exception):
    """The served object's own exception class.  Both tutorial drivers import
    this module as ``_tutorial_driver``, so under pickle it crosses as itself."""


class RpcTarget:
    """The object an RPC server serves as ``"target"``; records every call it runs."""

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def add(self, *args: Any, **kwargs: Any) -> Any:
        self._rec.on_executed("add", args, kwargs)
        return sum(args) + sum(kwargs.values())

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        self._rec.on_executed("sample", args, kwargs)
        return RPC_SAMPLE

    def fail(self, *args: Any, **kwargs: Any) -> Any:
        """``fail("builtin", text)`` raises ValueError, ``fail("custom", text)``
        RpcTargetError."""
        self._rec.on_executed("fail", args, kwargs)
        kind, text = args
        raise (ValueError if kind == "builtin" else RpcTargetError)(text)

    def ping(self, *args: Any, **kwargs: Any) -> None:
        """A signal (marked with the implementation's ``as_signal`` in ``rpc_setup``)."""
        self._rec.on_executed("ping", args, kwargs)


class _RpcLogCounter(logging.Handler):
    """Counts ERROR records of ``snakemq.rpc.*``: both implementations log a
    request they cannot decode there (and drop it)."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__(logging.ERROR)
        self.rec = rec

    def emit(self, record: logging.LogRecord) -> None:
        self.rec.event("rpc_errors", None)


class TutorialDriver:
    def __init__(self, impl: str, *, legacy: bool, channel: LineChannel) -> None:
        self.impl = impl
        self.legacy = legacy
        self.channel = channel
        self.rec = Recorder()
        self.api: dict[str, Any] = {}
        self.link: Any = None
        self.messaging: Any = None
        self.storage: Any = None
        self.ident = ""
        self.reconnect_interval = 0.5
        self.calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self.loop_thread: threading.Thread | None = None
        self.loop_done = threading.Event()
        self.receive_hook: Any = None
        self.rpc_server: Any = None
        self.rpc_client: Any = None
        self.rpc_calls: list[Future[dict[str, Any]]] = []
        self._last_closed_conn: str | None = None

    # ------------------------------------------------------------- loop thread

    def import_api(self) -> None:
        for name in ("link", "packeter", "messaging", "message"):
            self.api[name] = importlib.import_module(f"snakemq.{name}")
        self.api["snakemq"] = importlib.import_module("snakemq")

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self.calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _loop(self, cmd: dict[str, Any], ready: Future[None]) -> None:
        try:
            self._setup(cmd)
        except BaseException as exc:
            ready.set_exception(exc)
            self.loop_done.set()
            return
        ready.set_result(None)
        try:
            while True:
                try:
                    self.link.loop(poll_timeout=LOOP_POLL_TIMEOUT)
                    break
                except OSError as exc:
                    if not self._survive_legacy_socket_error(exc):
                        raise
        except BaseException:
            text = traceback.format_exc()
            log("link.loop() died:", text)
            self.rec.on_loop_error(text)
        finally:
            self.loop_done.set()
            # nothing will run the queued calls any more
            while True:
                try:
                    _, fut = self.calls.get_nowait()
                except queue.Empty:
                    break
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(RuntimeError("the link loop is not running"))

    def _survive_legacy_socket_error(self, exc: OSError) -> bool:
        """What a careful 1.6 program does about a 1.6 defect: 1.6's link lets
        some errors of one connection escape ``loop()`` -- e.g. ``SSLEOFError``
        when a TLS peer dies right after the handshake (``LinkSocket.send``
        re-raises every SSL error but WANT_WRITE, and ``Link.send`` only
        handles errno values), or any SSL error but WANT_READ in ``recv``.
        The legacy driver closes that one connection the way 1.6 closes one it
        does handle (``Link.handle_close``) and re-enters ``loop()``; every
        restart is counted (``loop_restarts`` in the report) and logged.  Not
        for our implementations (their loop must never die) and not for
        anything but a socket error raised for one known connection."""
        if not self.legacy or self.rec.value("loop_restarts", None) >= MAX_LEGACY_LOOP_RESTARTS:
            return False
        # the innermost frame that names a live connection id blames it
        # (``Link.send``, ``handle_recv``, ``handle_accept``...: the socket a
        # frame calls ``sock`` may be the listener)
        conn_id = None
        tb = exc.__traceback__
        while tb is not None:
            named = tb.tb_frame.f_locals.get("conn_id")
            if isinstance(named, str) and named in self.link._sock_by_conn:
                conn_id = named
            tb = tb.tb_next
        if conn_id is None or conn_id == self._last_closed_conn:
            return False  # no connection to blame, or closing it did not help
        self._last_closed_conn = conn_id
        sock = self.link._sock_by_conn[conn_id]
        log(
            "snakeMQ 1.6 let a socket error of one connection escape link.loop() "
            f"({exc!r}); closing connection {conn_id} and re-entering loop():",
            traceback.format_exc(),
        )
        self.link.handle_close(sock)
        self.rec.event("loop_restarts", None)
        return True

    def in_loop(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        if self.loop_done.is_set():
            raise RuntimeError(f"the link loop is not running: {self.rec.loop_error}")
        fut: Future[Any] = Future()
        self.calls.put((fn, fut))
        self.link.wakeup_poll()
        return fut.result(timeout)

    # ---------------------------------------------------------------- commands

    def cmd_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.import_api()
        self.ident = cmd["ident"]
        self.reconnect_interval = float(cmd.get("reconnect_interval") or 0.5)
        if cmd.get("journal"):
            self.rec.journal_to(cmd["journal"], cmd.get("kill_after"))
        # built inside the loop thread: 1.6's SQLite storage only works in the
        # thread that opened it
        ready: Future[None] = Future()
        self.loop_thread = threading.Thread(
            target=self._loop, args=(cmd, ready), name="link-loop", daemon=True
        )
        self.loop_thread.start()
        ready.result(60)
        return {"ok": True}

    def _setup(self, cmd: dict[str, Any]) -> None:
        snakemq = self.api["snakemq"]
        if hasattr(snakemq, "init"):  # the tutorial calls it; 1.6 removed it
            snakemq.init()
        self.link = self.api["link"].Link()
        self.link.reconnect_interval = self.reconnect_interval
        packeter = self.api["packeter"].Packeter(self.link)
        if cmd.get("storage"):
            if "://" in cmd["storage"]:  # a database URL (ours: PostgreSQL)
                sqla_mod = importlib.import_module("snakemq.storage.sqla")
                self.storage = sqla_mod.SqlAlchemyQueuesStorage(cmd["storage"])
            else:
                sqlite_mod = importlib.import_module("snakemq.storage.sqlite")
                self.storage = sqlite_mod.SqliteQueuesStorage(cmd["storage"])
        # ``window`` (ours only: 1.6 has no acknowledgements)
        opts = {"window": int(cmd["window"])} if cmd.get("window") else {}
        self.messaging = self.api["messaging"].Messaging(
            self.ident, "", packeter, self.storage, **opts
        )
        m = self.messaging
        if cmd.get("keepalive_interval") is not None:
            m.keepalive_interval = float(cmd["keepalive_interval"])
            m.keepalive_wait = float(cmd.get("keepalive_wait", 0.5))
        rec = self.rec
        m.on_message_recv.add(self._on_received)
        m.on_connect.add(lambda conn_id, ident: rec.event("connected", ident))
        m.on_disconnect.add(lambda conn_id, ident: rec.event("disconnected", ident))
        m.on_message_drop.add(lambda ident, uuid: rec.on_dropped(ident, uuid))
        m.on_message_sent.add(lambda conn_id, ident, uuid: rec.event("sent", ident))
        m.on_error.add(lambda conn_id, exc: rec.on_error(f"{conn_id}: {exc!r}"))
        if not self.legacy:
            m.on_message_delivered.add(self._on_delivered)
        self.link.on_loop_pass.add(self._run_calls)

    def _on_received(self, conn_id: str, ident: str, msg: Any) -> None:
        self.rec.on_received(ident, msg.uuid, msg.data, msg.ttl)

    def _on_delivered(self, *args: Any) -> None:
        # on_message_delivered(ident, uuid) — tolerate a leading conn_id
        ident, uuid = args[-2], args[-1]
        self.rec.on_delivered(ident, uuid)

    def ssl_config(self, tls: dict[str, Any] | None) -> Any:
        if not tls:
            return None
        kwargs: dict[str, Any] = {}
        if tls.get("bind_ident"):
            if self.legacy:
                raise NotImplementedError("snakeMQ 1.6 cannot bind identifiers to certificates")
            kwargs["bind_ident"] = True
        return self.api["link"].SSLConfig(
            tls.get("key"),
            tls.get("cert"),
            cert_reqs=ssl.CERT_REQUIRED if tls.get("verify") else ssl.CERT_NONE,
            ca_certs=tls.get("ca"),
            **kwargs,
        )

    def cmd_listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cfg = self.ssl_config(cmd.get("tls"))
        address = (cmd.get("host", "127.0.0.1"), int(cmd.get("port", 0)))
        bound = self.in_loop(lambda: self.link.add_listener(address, ssl_config=cfg))
        return {"ok": True, "port": int(bound[1])}

    def cmd_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cfg = self.ssl_config(cmd.get("tls"))
        address = (cmd.get("host", "127.0.0.1"), int(cmd["port"]))
        interval = float(cmd.get("reconnect_interval") or self.reconnect_interval)
        self.in_loop(
            lambda: self.link.add_connector(address, reconnect_interval=interval, ssl_config=cfg)
        )
        return {"ok": True}

    def cmd_send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        message_mod = self.api["message"]
        to = cmd["to"]
        ttl = cmd.get("ttl")
        flags = message_mod.FLAG_PERSISTENT if cmd.get("persistent") else 0
        seed = cmd.get("seed", "")
        sizes = cmd["sizes"]
        start = int(cmd.get("start", 0))

        def send_all() -> int:
            for i, size in enumerate(sizes, start):
                data = payload(seed, i, size)
                msg = message_mod.Message(data, ttl=ttl, flags=flags)
                self.messaging.send_message(to, msg)
                self.rec.on_sent(to, msg.uuid, data)
            return len(sizes)

        count = self.in_loop(send_all, timeout=120.0) if self.legacy else send_all()
        return {"ok": True, "count": count}

    # --------------------------------------------------------------------- RPC

    def cmd_rpc_setup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rpc = importlib.import_module("snakemq.rpc")
        pickler = cmd.get("pickler", "default")
        if pickler not in ("default", "pickle"):
            raise ValueError(f"pickler must be 'default' or 'pickle', not {pickler!r}")
        kwargs = {"pickler": pickle} if pickler == "pickle" else {}
        rpc_log = logging.getLogger("snakemq.rpc")
        if not any(isinstance(h, _RpcLogCounter) for h in rpc_log.handlers):
            rpc_log.addHandler(_RpcLogCounter(self.rec))
            rpc_log.addHandler(logging.StreamHandler(sys.stderr))

        def setup() -> None:
            if self.receive_hook is None:
                self.receive_hook = self.api["messaging"].ReceiveHook(self.messaging)
                if not hasattr(self.messaging.on_message_recv, "add"):
                    # 1.6's ReceiveHook *replaces* on_message_recv: keep
                    # recording every message through a catch-all hook
                    self.receive_hook.register(b"", self._on_received)
            if cmd.get("server") and self.rpc_server is None:
                if not hasattr(RpcTarget.ping, rpc.METHOD_RPC_AS_SIGNAL_ATTR):
                    rpc.as_signal(RpcTarget.ping)
                self.rpc_server = rpc.RpcServer(self.receive_hook, **kwargs)
                self.rpc_server.register_object(RpcTarget(self.rec), "target")
            if cmd.get("client") and self.rpc_client is None:
                # before connecting: the client learns who is connected from on_connect
                self.rpc_client = rpc.RpcClient(self.receive_hook, **kwargs)

        self.in_loop(setup)
        return {"ok": True}

    def cmd_rpc_call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.rpc_client is None:
            raise RuntimeError("no RPC client: send rpc_setup with client=true first")
        proxy = self.rpc_client.get_proxy(cmd["to"], cmd.get("object", "target"))
        method = getattr(proxy, cmd["method"])
        method.as_signal(cmd.get("signal"))  # None: a regular call
        method.set_timeout(cmd.get("timeout"))
        args, kwargs = list(cmd.get("args", [])), dict(cmd.get("kwargs") or {})
        fut: Future[dict[str, Any]] = Future()

        def call() -> None:
            t0 = time.monotonic()
            try:
                value = method(*args, **kwargs)
            except BaseException as exc:
                fut.set_result(
                    {
                        "returned": None,
                        "raised": {
                            "type": type(exc).__qualname__,
                            "module": type(exc).__module__,
                            "message": str(exc),
                            "remote_traceback": getattr(exc, "__remote_traceback__", None),
                        },
                        "seconds": time.monotonic() - t0,
                    }
                )
            else:
                fut.set_result(
                    {"returned": repr(value), "raised": None, "seconds": time.monotonic() - t0}
                )

        self.rpc_calls.append(fut)
        threading.Thread(target=call, name=f"rpc-call-{cmd['method']}", daemon=True).start()
        return {"ok": True, "call": len(self.rpc_calls) - 1}

    def cmd_rpc_result(self, cmd: dict[str, Any]) -> dict[str, Any]:
        fut = self.rpc_calls[int(cmd["call"])]
        try:
            result = fut.result(float(cmd.get("timeout", 30.0)))
        except FutureTimeoutError:
            return {"ok": False, "error": "timeout"}
        return {"ok": True, **result}

    def cmd_quit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.link is not None and not self.loop_done.is_set():
            self.in_loop(self.link.stop)
            self.loop_done.wait(10)
        return {"ok": True}

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        if name == "wait":
            kind, ident, count, timeout = check_wait_args(cmd)
            return self.rec.wait(kind, ident, count, timeout)
        if name == "report":
            return self.rec.report()
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {name!r}"}
        result: dict[str, Any] = handler(cmd)
        return result


def main(impl: str, *, legacy: bool) -> None:
    channel = LineChannel(quiet_stdout())
    driver = TutorialDriver(impl, legacy=legacy, channel=channel)
    channel.send({"ok": True, "ready": impl, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            answer = driver.handle(cmd)
        except NotImplementedError as exc:
            answer = {"ok": False, "error": "unsupported", "detail": str(exc)}
        except Exception as exc:
            log(traceback.format_exc())
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        channel.send(answer)
        if cmd.get("cmd") == "quit":
            break
    sys.stderr.flush()
    os._exit(0)  # do not wait for the daemon loop thread
