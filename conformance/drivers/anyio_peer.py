"""Conformance driver for ``snakemq_anyio`` on asyncio or trio (``--backend``).

One task reads commands (stdin is read in a worker thread), one drains the
receive stream, one drains the event stream; waits are answered from the
``Recorder`` as events arrive.  Only the public ``snakemq_anyio`` API is used.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import traceback
from contextlib import AsyncExitStack
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio
from _driverlib import LineChannel, Recorder, check_wait_args, log, payload, quiet_stdout
from anyio.abc import TaskGroup
from snakemq_anyio import (
    FLAG_PERSISTENT,
    ErrorOccurred,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageSent,
    Messaging,
    PeerConnected,
    PeerDisconnected,
    SSLConfig,
)


class AnyioDriver:
    def __init__(self, backend: str, channel: LineChannel) -> None:
        self.backend = backend
        self.channel = channel
        self.rec = Recorder()
        self.rec.listeners.append(self._changed)
        self.changed = anyio.Event()
        self.stack = AsyncExitStack()
        self.messaging: Messaging | None = None
        self.tg: TaskGroup | None = None

    def _changed(self) -> None:
        # the recorder is only updated from this event loop's tasks
        self.changed.set()

    def m(self) -> Messaging:
        if self.messaging is None:
            raise RuntimeError("send 'start' first")
        return self.messaging

    async def _drain_messages(self, m: Messaging) -> None:
        rec = self.rec
        try:
            while True:
                for ident, msg in await m.receive_batch():
                    rec.on_received(ident, msg.uuid, msg.data, msg.ttl)
        except anyio.ClosedResourceError:
            pass

    async def _drain_events(self, m: Messaging) -> None:
        rec = self.rec
        with m.events(max_buffered=10_000_000) as events:
            async for ev in events:
                if isinstance(ev, PeerConnected):
                    rec.event("connected", ev.ident)
                elif isinstance(ev, PeerDisconnected):
                    rec.event("disconnected", ev.ident)
                elif isinstance(ev, MessageSent):
                    rec.event("sent", ev.ident)
                elif isinstance(ev, MessageDelivered):
                    rec.on_delivered(ev.ident, ev.uuid)
                elif isinstance(ev, MessageDropped):
                    rec.on_dropped(ev.ident, ev.uuid)
                elif isinstance(ev, ErrorOccurred):
                    rec.on_error(f"{ev.conn_id} {ev.ident}: {ev.error!r}")

    @staticmethod
    def ssl_config(tls: dict[str, Any] | None) -> SSLConfig | None:
        if not tls:
            return None
        return SSLConfig(
            tls.get("key"),
            tls.get("cert"),
            cert_reqs=ssl.CERT_REQUIRED if tls.get("verify") else ssl.CERT_NONE,
            ca_certs=tls.get("ca"),
            bind_ident=bool(tls.get("bind_ident")),
        )

    # ---------------------------------------------------------------- commands

    async def cmd_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.tg is not None
        opts: dict[str, Any] = {}
        if cmd.get("keepalive_interval") is not None:
            opts["keepalive_interval"] = float(cmd["keepalive_interval"])
            opts["keepalive_wait"] = float(cmd.get("keepalive_wait", 0.5))
        if cmd.get("reconnect_interval"):
            opts["reconnect_interval"] = float(cmd["reconnect_interval"])
        if cmd.get("window"):
            opts["window"] = int(cmd["window"])
        if cmd.get("journal"):
            self.rec.journal_to(cmd["journal"], cmd.get("kill_after"))
        m = Messaging(cmd["ident"], storage=cmd.get("storage"), **opts)
        await self.stack.enter_async_context(m)
        self.messaging = m
        self.tg.start_soon(self._drain_messages, m)
        self.tg.start_soon(self._drain_events, m)
        return {"ok": True}

    async def cmd_listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        address = (cmd.get("host", "127.0.0.1"), int(cmd.get("port", 0)))
        _, port = await self.m().add_listener(address, ssl_config=self.ssl_config(cmd.get("tls")))
        return {"ok": True, "port": port}

    async def cmd_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        address = (cmd.get("host", "127.0.0.1"), int(cmd["port"]))
        await self.m().add_connector(address, ssl_config=self.ssl_config(cmd.get("tls")))
        return {"ok": True}

    async def cmd_send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        m = self.m()
        to = cmd["to"]
        ttl = cmd.get("ttl")
        flags = FLAG_PERSISTENT if cmd.get("persistent") else 0
        seed = cmd.get("seed", "")
        start = int(cmd.get("start", 0))
        for i, size in enumerate(cmd["sizes"], start):
            data = payload(seed, i, size)
            msg = Message(data, ttl=ttl, flags=flags)
            await m.send_message(to, msg)
            self.rec.on_sent(to, msg.uuid, data)
        return {"ok": True, "count": len(cmd["sizes"])}

    async def cmd_wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind, ident, count, timeout = check_wait_args(cmd)
        with anyio.move_on_after(timeout):
            while self.rec.value(kind, ident) < count:
                self.changed = anyio.Event()
                await self.changed.wait()
        value = self.rec.value(kind, ident)
        if value >= count:
            return {"ok": True, "value": value}
        return {"ok": False, "error": "timeout", "value": value}

    async def cmd_report(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self.rec.report()

    async def cmd_quit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self.stack.aclose()
        return {"ok": True}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"cmd_{cmd.get('cmd')}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd.get('cmd')!r}"}
        result: dict[str, Any] = await handler(cmd)
        return result

    async def run(self) -> None:
        self.channel.send({"ok": True, "ready": f"anyio-{self.backend}", "pid": os.getpid()})
        async with anyio.create_task_group() as tg:
            self.tg = tg
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                if not line.strip():
                    continue
                cmd: dict[str, Any] = {}
                try:
                    cmd = json.loads(line)
                    answer = await self.handle(cmd)
                except Exception as exc:
                    log(traceback.format_exc())
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.channel.send(answer)
                if cmd.get("cmd") == "quit":
                    break
            await self.stack.aclose()
            tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    channel = LineChannel(quiet_stdout())
    driver = AnyioDriver(args.backend, channel)
    try:
        anyio.run(driver.run, backend=args.backend)
    except BaseException:
        log("the event loop died:", traceback.format_exc())
        sys.stderr.flush()
        os._exit(3)
    sys.stderr.flush()
    os._exit(0)  # the stdin reader thread may still block in readline()


if __name__ == "__main__":
    main()
