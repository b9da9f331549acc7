"""pyzmq driver: PUSH/PULL, DEALER/ROUTER or REQ/REP, chosen by ``config["pattern"]``.

REQ/REP is the request/reply reference and runs only the round-trip workloads.

The reference point for what a C messaging core reached from Python gets; it
has no TLS and no durable queue, so the harness gives it neither workload.
"""

from __future__ import annotations

import json
import time
from typing import Any

import _common
import zmq

#: Payloads of at least this size are handed to libzmq without a copy.
ZERO_COPY_FROM = 64 * 1024


def _bind(sock: Any, host: str) -> int:
    sock.bind(f"tcp://{host}:*")
    endpoint: bytes = sock.getsockopt(zmq.LAST_ENDPOINT)
    return int(endpoint.decode().rsplit(":", 1)[1])


def run_receiver(config: dict[str, Any]) -> None:
    """Throughput receiver, or echo server for the latency workload."""
    ctx = zmq.Context()
    host = config["host"]
    router = config["pattern"] == "dealerrouter"

    if config["mode"] == "noread":
        sock = ctx.socket(zmq.ROUTER if router else zmq.PULL)
        _common.ready(port=_bind(sock, host))
        _common.block_forever()

    if config["mode"] == "rpc":
        # What an RPC server does on REQ/REP: decode the call, run it, encode the reply.
        sock = ctx.socket(zmq.REP)
        _common.ready(port=_bind(sock, host))
        served = _common.RpcEcho()
        while True:
            call = json.loads(sock.recv())
            method = getattr(served, call["method"])
            sock.send(json.dumps({"result": method(*call["args"])}).encode())

    if config["mode"] == "latency":
        if config["pattern"] == "reqrep":
            sock = ctx.socket(zmq.REP)
            _common.ready(port=_bind(sock, host))
            while True:
                sock.send(sock.recv())
        if router:
            sock = ctx.socket(zmq.ROUTER)
            _common.ready(port=_bind(sock, host))
            while True:
                sock.send_multipart(sock.recv_multipart())
        else:
            pull = ctx.socket(zmq.PULL)
            push = ctx.socket(zmq.PUSH)
            _common.ready(port=_bind(pull, host), port2=_bind(push, host))
            while True:
                push.send(pull.recv())

    meter = _common.ThroughputMeter(config["count"], config["size"])
    sock = ctx.socket(zmq.ROUTER if router else zmq.PULL)
    _common.ready(port=_bind(sock, host))
    # The natural pyzmq receive loop, inline: a meter call per message would cost
    # this fast system a larger share of its time than it costs the others.
    size = config["size"]
    wrong = 0
    if router:
        recv_multipart = sock.recv_multipart
        meter.add(len(recv_multipart()[1]))
        for _ in range(config["count"] - 1):
            if len(recv_multipart()[1]) != size:
                wrong += 1
    else:
        recv = sock.recv
        meter.add(len(recv()))
        for _ in range(config["count"] - 1):
            if len(recv()) != size:
                wrong += 1
    meter.last = time.perf_counter()
    meter.received = config["count"]
    meter.bytes = config["count"] * size  # every length was compared with size
    meter.wrong_size += wrong
    meter.report()
    _common.block_forever()


def run_sender(config: dict[str, Any]) -> None:
    """Throughput sender, or ping-pong client for the latency workload."""
    ctx = zmq.Context()
    address = f"tcp://{config['host']}:{config['port']}"
    router = config["pattern"] == "dealerrouter"
    size = config["size"]
    payload = b"x" * size
    copy = size < ZERO_COPY_FROM

    if config["mode"] == "rpc":
        meter = _common.LatencyMeter(config["count"], config["warmup"], size)
        sock = ctx.socket(zmq.REQ)
        sock.connect(address)
        text = "x" * size
        while True:
            meter.start()
            sock.send(json.dumps({"object": "bench", "method": "echo", "args": [text]}).encode())
            if meter.done(len(json.loads(sock.recv())["result"])):
                break
        meter.report()
        _common.block_forever()

    if config["mode"] == "latency":
        meter = _common.LatencyMeter(config["count"], config["warmup"], size)
        if config["pattern"] == "reqrep":
            out = inp = ctx.socket(zmq.REQ)
            out.connect(address)
        elif router:
            out = inp = ctx.socket(zmq.DEALER)
            out.connect(address)
        else:
            out = ctx.socket(zmq.PUSH)
            out.connect(address)
            inp = ctx.socket(zmq.PULL)
            inp.connect(f"tcp://{config['host']}:{config['port2']}")
        while True:
            meter.start()
            out.send(payload)
            if meter.done(len(inp.recv())):
                break
        meter.report()
        _common.block_forever()

    sock = ctx.socket(zmq.DEALER if router else zmq.PUSH)
    sock.connect(address)
    if config["mode"] == "noread":
        # send() blocks at the high-water mark: that is pyzmq's answer to a stalled reader.
        for i in range(1, config["count"] + 1):
            sock.send(payload, copy=copy)
            if i % _common.PROGRESS_EVERY == 0:
                _common.pushed(i)
        _common.emit("RESULT", {"pushed": config["count"], "rss_kib": _common.peak_rss_kib()})
        _common.block_forever()
    for _ in range(config["count"]):
        sock.send(payload, copy=copy)
    _common.block_forever()


if __name__ == "__main__":
    cfg = _common.load_config()
    if cfg["role"] == "recv":
        run_receiver(cfg)
    else:
        run_sender(cfg)
