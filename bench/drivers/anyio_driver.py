"""Driver for our async package ``snakemq_anyio``, on the backend ``config["backend"]``.

The sender awaits ``send_message`` in a plain loop: the package's own
backpressure (the in-flight window) is what paces it.  Persistent messages
are sent by ``PERSISTENT_PRODUCERS`` tasks at once, as an async application
with that many requests in progress would: each ``send_message`` still
returns only once its message is on disk, and concurrent sends share commits.
"""

from __future__ import annotations

import ssl
from typing import Any

import _common
import anyio
import anyio.to_thread
import snakemq_anyio
import snakemq_anyio.rpc

PERSISTENT_PRODUCERS = 32


def _ssl_config(config: dict[str, Any]) -> Any:
    tls = config.get("tls")
    if not tls:
        return None
    return snakemq_anyio.SSLConfig(
        tls["key"], tls["cert"], cert_reqs=ssl.CERT_REQUIRED, ca_certs=tls["ca"]
    )


def _storage(config: dict[str, Any]) -> Any:
    if not config.get("storage"):
        return None
    if "://" in config["storage"]:  # a database URL: Messaging opens it in a worker thread
        return config["storage"]
    return snakemq_anyio.SqliteQueuesStorage(config["storage"])


async def run_receiver(config: dict[str, Any]) -> None:
    """Throughput receiver, or echo server for the latency workload."""
    async with snakemq_anyio.Messaging(_common.RECEIVER_IDENT) as messaging:
        _host, port = await messaging.add_listener(
            (config["host"], 0), ssl_config=_ssl_config(config)
        )
        _common.ready(port=port)
        if config["mode"] == "rpc":
            async with snakemq_anyio.rpc.Rpc(messaging) as rpc:
                rpc.register_object(_common.RpcEcho(), "bench")
                await anyio.sleep_forever()
        if config["mode"] == "noread":
            await messaging.wait_connected(_common.SENDER_IDENT)
            await anyio.sleep_forever()
        if config["mode"] == "failover":
            failover = _common.FailoverMeter(config["count"])
            async for _ident, message in messaging:
                failover.add(message.data)
        if config["mode"] == "latency":
            async for ident, message in messaging:
                await messaging.send_message(
                    ident, snakemq_anyio.Message(message.data, ttl=_common.TTL)
                )
        meter = _common.ThroughputMeter(config["count"], config["size"])
        async for _ident, message in messaging:
            if meter.add(len(message.data)):
                break
        meter.report()
        await anyio.sleep_forever()


async def run_sender(config: dict[str, Any]) -> None:
    """Throughput sender, or ping-pong client for the latency workload."""
    if config["mode"] == "failover":
        await _failover_sender(config)
        return
    async with snakemq_anyio.Messaging(_common.SENDER_IDENT, storage=_storage(config)) as messaging:
        await messaging.add_connector(
            (config["host"], config["port"]), ssl_config=_ssl_config(config)
        )
        await messaging.wait_connected(_common.RECEIVER_IDENT)
        size = config["size"]
        payload = b"x" * size
        to = _common.RECEIVER_IDENT

        if config["mode"] == "rpc":
            meter = _common.LatencyMeter(config["count"], config["warmup"], size)
            text = "x" * size
            async with snakemq_anyio.rpc.Rpc(messaging) as rpc:
                proxy = rpc.get_proxy(to, "bench")
                while True:
                    meter.start()
                    if meter.done(len(await proxy.echo(text))):
                        break
                meter.report()
                await anyio.sleep_forever()

        if config["mode"] == "latency":
            meter = _common.LatencyMeter(config["count"], config["warmup"], size)
            while True:
                meter.start()
                await messaging.send_message(to, snakemq_anyio.Message(payload, ttl=_common.TTL))
                _ident, message = await messaging.receive()
                if meter.done(len(message.data)):
                    break
            meter.report()
            await anyio.sleep_forever()

        if config["mode"] == "noread":
            for i in range(1, config["count"] + 1):
                await messaging.send_message(to, snakemq_anyio.Message(payload, ttl=_common.TTL))
                if i % _common.PROGRESS_EVERY == 0:
                    _common.pushed(i)
            _common.emit("RESULT", {"pushed": config["count"], "rss_kib": _common.peak_rss_kib()})
            await anyio.sleep_forever()

        if config.get("storage"):
            count = config["count"]

            async def produce(share: int) -> None:
                for _ in range(share):
                    await messaging.send_message(
                        to,
                        snakemq_anyio.Message(
                            payload, ttl=_common.TTL, flags=snakemq_anyio.FLAG_PERSISTENT
                        ),
                    )

            async with anyio.create_task_group() as tg:
                for i in range(PERSISTENT_PRODUCERS):
                    tg.start_soon(
                        produce, count // PERSISTENT_PRODUCERS + (i < count % PERSISTENT_PRODUCERS)
                    )
            await anyio.sleep_forever()

        for _ in range(config["count"]):
            await messaging.send_message(to, snakemq_anyio.Message(payload, ttl=_common.TTL))
        await anyio.sleep_forever()


async def _failover_sender(config: dict[str, Any]) -> None:
    """Holder or standby of the failover workload: the same configuration; a
    standby's ``async with Messaging`` enters once it took the ident over."""
    from snakemq_anyio import SqlAlchemyQueuesStorage

    storage = await anyio.to_thread.run_sync(
        lambda: SqlAlchemyQueuesStorage(config["storage"], ident=_common.SENDER_IDENT)
    )
    if not storage.held:
        _common.standing_by()
    async with snakemq_anyio.Messaging(_common.SENDER_IDENT, storage=storage) as messaging:
        await messaging.add_connector((config["host"], config["port"]))
        await messaging.wait_connected(_common.RECEIVER_IDENT)
        data = _common.failover_payload(config)
        for _ in range(config["count"]):
            await messaging.send_message(
                _common.RECEIVER_IDENT,
                snakemq_anyio.Message(data, ttl=_common.TTL, flags=snakemq_anyio.FLAG_PERSISTENT),
            )
        await anyio.sleep_forever()


if __name__ == "__main__":
    cfg = _common.load_config()
    main = run_receiver if cfg["role"] == "recv" else run_sender
    anyio.run(main, cfg, backend=cfg["backend"])
