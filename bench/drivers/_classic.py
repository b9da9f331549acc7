"""A driver written against the classic snakeMQ tutorial API (Link / Packeter / Messaging).

Used as is for snakeMQ 1.6 (run by the 1.6 virtualenv's interpreter) and for our
sync package, whose API is the same.  Everything runs in the thread that runs
``Link.loop()``: 1.6's SQLite storage cannot be used from another thread.

The sender keeps a bounded window of queued messages and tops it up on every
loop pass, so the cost of ``send_message`` (and, when persistent, of making the
message durable) is inside the interval the receiver measures.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import _common
import snakemq
import snakemq.link
import snakemq.message
import snakemq.messaging
import snakemq.packeter
import snakemq.rpc


def _ssl_config(config: dict[str, Any]) -> Any:
    tls = config.get("tls")
    if not tls:
        return None
    return snakemq.link.SSLConfig(
        tls["key"], tls["cert"], cert_reqs=ssl.CERT_REQUIRED, ca_certs=tls["ca"]
    )


def _peer(ident: str, config: dict[str, Any]) -> tuple[Any, Any]:
    if hasattr(snakemq, "init"):
        snakemq.init()
    link = snakemq.link.Link()
    packeter = snakemq.packeter.Packeter(link)
    storage: Any = None
    if config.get("storage") and "://" in config["storage"]:  # a database URL
        from snakemq.storage.sqla import SqlAlchemyQueuesStorage

        storage = SqlAlchemyQueuesStorage(config["storage"])
    elif config.get("storage"):
        from snakemq.storage.sqlite import SqliteQueuesStorage

        storage = SqliteQueuesStorage(config["storage"])
    messaging = snakemq.messaging.Messaging(ident, "", packeter, storage)
    return link, messaging


def _message(payload: bytes, persistent: bool) -> Any:
    flags = snakemq.message.FLAG_PERSISTENT if persistent else 0
    return snakemq.message.Message(payload, ttl=_common.TTL, flags=flags)


def run_receiver(config: dict[str, Any]) -> None:
    """Throughput receiver, or echo server for the latency workload."""
    link, messaging = _peer(_common.RECEIVER_IDENT, config)
    _host, port = link.add_listener((config["host"], 0), ssl_config=_ssl_config(config))

    if config["mode"] == "noread":
        # Identify, then never read again: stop the loop and keep the process alive.
        messaging.on_connect.add(lambda conn_id, ident: link.stop())
        _common.ready(port=port)
        link.loop()
        _common.block_forever()

    if config["mode"] == "failover":
        failover = _common.FailoverMeter(config["count"])
        messaging.on_message_recv.add(lambda conn_id, ident, message: failover.add(message.data))
    elif config["mode"] == "rpc":
        server = snakemq.rpc.RpcServer(snakemq.messaging.ReceiveHook(messaging))
        server.register_object(_common.RpcEcho(), "bench")
    elif config["mode"] == "latency":

        def on_echo(conn_id: Any, ident: str, message: Any) -> None:
            messaging.send_message(ident, _message(message.data, False))

        messaging.on_message_recv.add(on_echo)
    else:
        meter = _common.ThroughputMeter(config["count"], config["size"])

        def on_recv(conn_id: Any, ident: str, message: Any) -> None:
            if meter.add(len(message.data)):
                meter.report()

        messaging.on_message_recv.add(on_recv)

    _common.ready(port=port)
    link.loop()


def run_sender(config: dict[str, Any]) -> None:
    """Throughput sender, or ping-pong client for the latency workload."""
    link, messaging = _peer(_common.SENDER_IDENT, config)
    link.add_connector((config["host"], config["port"]), ssl_config=_ssl_config(config))
    size = config["size"]
    payload = b"x" * size

    if config["mode"] == "rpc":
        # The tutorial's RPC: the loop in a thread of its own, calls block the caller.
        client = snakemq.rpc.RpcClient(snakemq.messaging.ReceiveHook(messaging))
        proxy = client.get_proxy(_common.RECEIVER_IDENT, "bench")
        connected = threading.Event()
        messaging.on_connect.add(lambda conn_id, ident: connected.set())
        threading.Thread(target=link.loop, name="link-loop", daemon=True).start()
        connected.wait()
        meter = _common.LatencyMeter(config["count"], config["warmup"], size)
        text = "x" * size
        while True:
            meter.start()
            if meter.done(len(proxy.echo(text))):
                break
        meter.report()
        _common.block_forever()

    if config["mode"] == "latency":
        meter = _common.LatencyMeter(config["count"], config["warmup"], size)

        def ping() -> None:
            meter.start()
            messaging.send_message(_common.RECEIVER_IDENT, _message(payload, False))

        def on_connect(conn_id: Any, ident: str) -> None:
            if ident == _common.RECEIVER_IDENT and meter.seen == 0:
                ping()

        def on_pong(conn_id: Any, ident: str, message: Any) -> None:
            if meter.done(len(message.data)):
                meter.report()
            else:
                ping()

        messaging.on_connect.add(on_connect)
        messaging.on_message_recv.add(on_pong)
        link.loop()
        return

    count = config["count"]
    persistent = bool(config.get("storage"))

    if config["mode"] == "failover":
        # holder or standby (the same configuration: a standby's link neither
        # listens nor dials until it took the ident over, then this runs)
        data = _common.failover_payload(config)

        def send_all(conn_id: Any, ident: str) -> None:
            if ident == _common.RECEIVER_IDENT:
                for _ in range(count):
                    messaging.send_message(ident, _message(data, True))

        messaging.on_connect.add(send_all)
        if messaging.standby:
            _common.standing_by()
        link.loop()
        return

    if config["mode"] == "noread":

        def produce(ident: str) -> None:
            for i in range(1, count + 1):
                messaging.send_message(ident, _message(payload, False))
                if i % _common.PROGRESS_EVERY == 0:
                    _common.pushed(i)
            _common.emit("RESULT", {"pushed": count, "rss_kib": _common.peak_rss_kib()})

        def push(conn_id: Any, ident: str) -> None:
            # a producer thread, as an application would have: a system with
            # backpressure may block it; the loop thread must keep running
            if ident == _common.RECEIVER_IDENT:
                threading.Thread(target=produce, args=(ident,), daemon=True).start()

        messaging.on_connect.add(push)
        link.loop()
        return

    limit = _common.window(size, persistent)
    state = {"queued": 0, "sent": 0, "connected": False}

    def on_connect_send(conn_id: Any, ident: str) -> None:
        if ident == _common.RECEIVER_IDENT:
            state["connected"] = True

    def on_sent(conn_id: Any, ident: str, uuid: bytes) -> None:
        state["sent"] += 1

    def top_up() -> None:
        if not state["connected"]:
            return
        queued = state["queued"]
        room = min(count - queued, limit - (queued - state["sent"]))
        for _ in range(room):
            messaging.send_message(_common.RECEIVER_IDENT, _message(payload, persistent))
        state["queued"] = queued + max(0, room)

    messaging.on_connect.add(on_connect_send)
    messaging.on_message_sent.add(on_sent)
    link.on_loop_pass.add(top_up)
    link.loop()
