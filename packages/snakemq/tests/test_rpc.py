"""RPC over real sockets: calls, signals, timeouts, exceptions, at-most-once,
and the safe default serializer."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snakemq.messaging
import snakemq.rpc
from snakemq.message import Message
from sync_helpers import WAIT, Peer


class Service:
    def __init__(self) -> None:
        self.calls = 0
        self.signals: list[Any] = []
        self.signalled = threading.Event()
        self.release = threading.Event()
        self.entered = threading.Event()

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def fail(self) -> None:
        raise ValueError("bad value on the server")

    def fail_custom(self) -> None:
        class Custom(Exception):
            pass

        raise Custom("custom failure")

    def slow(self) -> str:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT)
        return "done"

    @snakemq.rpc.as_signal
    def notify(self, value: Any) -> None:
        self.signals.append(value)
        self.signalled.set()


@pytest.fixture
def rpc_pair(peers: list[Peer]) -> Iterator[tuple[Peer, Peer, Service, snakemq.rpc.RpcClient]]:
    server = Peer("server")
    client = Peer("client")
    peers += [server, client]
    service = Service()
    rpc_server = snakemq.rpc.RpcServer(snakemq.messaging.ReceiveHook(server.messaging))
    rpc_server.register_object(service, "svc")
    rpc_client = snakemq.rpc.RpcClient(snakemq.messaging.ReceiveHook(client.messaging))
    port = server.listen()
    server.start()
    client.connect(port)
    client.start()
    client.wait_connected("server")
    yield server, client, service, rpc_client
    service.release.set()


def test_call_returns_the_result(rpc_pair: Any) -> None:
    _, _, service, client = rpc_pair
    proxy = client.get_proxy("server", "svc")
    assert proxy.add(2, 3) == 5
    assert proxy.echo({"b": b"\x00\xff", "l": [1, "x", None]}) == {
        "b": b"\x00\xff",
        "l": [1, "x", None],
    }
    assert service.calls == 1


def test_builtin_exception_comes_back_with_remote_traceback(rpc_pair: Any) -> None:
    proxy = rpc_pair[3].get_proxy("server", "svc")
    with pytest.raises(ValueError, match="bad value on the server") as info:
        proxy.fail()
    assert "Traceback" in getattr(info.value, snakemq.rpc.REMOTE_TRACEBACK_ATTR)


def test_other_exception_comes_back_as_remote_error(rpc_pair: Any) -> None:
    proxy = rpc_pair[3].get_proxy("server", "svc")
    with pytest.raises(snakemq.rpc.RemoteError, match="custom failure") as info:
        proxy.fail_custom()
    assert "Custom" in info.value.type_name


def test_unknown_object_and_method(rpc_pair: Any) -> None:
    client = rpc_pair[3]
    with pytest.raises(snakemq.rpc.RemoteError, match="NoInstanceError"):
        client.get_proxy("server", "nope").add(1, 2)
    with pytest.raises(snakemq.rpc.RemoteError, match="NoMethodError"):
        client.get_proxy("server", "svc").missing()


def test_signal_is_delivered_without_reply(rpc_pair: Any) -> None:
    _, _, service, client = rpc_pair
    method = client.get_proxy("server", "svc").notify
    method.as_signal(10)
    assert method("ping") is None
    assert service.signalled.wait(WAIT)
    assert service.signals == ["ping"]


def test_call_to_absent_peer_times_out(rpc_pair: Any) -> None:
    method = rpc_pair[3].get_proxy("nobody", "svc").add
    method.set_timeout(0.3)
    with pytest.raises(snakemq.rpc.NotConnected, match="no reply from 'nobody'"):
        method(1, 2)


def test_slow_call_times_out_as_partial_call(rpc_pair: Any) -> None:
    _, _, service, client = rpc_pair
    method = client.get_proxy("server", "svc").slow
    method.set_timeout(0.3)
    with pytest.raises(snakemq.rpc.PartialCall):
        method()
    assert service.entered.is_set()


def test_call_resent_after_reconnect_executes_once(rpc_pair: Any) -> None:
    server, client, service, rpc_client = rpc_pair
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(rpc_client.get_proxy("server", "svc").slow())
    )
    caller.start()
    assert service.entered.wait(WAIT)
    # drop the connection mid-call: the client re-sends the request on reconnect
    for conn_id in list(server.messaging.connected_idents().values()):
        server.link.close(conn_id)
    client.rec.wait_count("on_connect", 2)
    # the repeated request reaches the server while the first execution still runs
    server.rec.wait(
        lambda: (
            sum(
                args[2].data.startswith(snakemq.rpc.REQUEST_PREFIX)
                for args in server.rec.get("on_message_recv")
            )
            >= 2
        ),
        what="the re-sent request",
    )
    service.release.set()
    caller.join(WAIT)
    assert result == ["done"]
    assert service.calls == 1


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_default_serializer_refuses_pickle_payload(rpc_pair: Any, tmp_path: Path) -> None:
    _, client, service, rpc_client = rpc_pair
    marker = tmp_path / "pwned"
    payload = pickle.dumps(
        {"command": "call", "object": "svc", "method": "add", "x": _Exploit(str(marker))}
    )
    client.messaging.send_message("server", Message(snakemq.rpc.REQUEST_PREFIX + payload, ttl=5))
    # a regular call afterwards proves the server processed (and refused) the payload
    assert rpc_client.get_proxy("server", "svc").add(1, 1) == 2
    assert not marker.exists()
    assert service.calls == 1


def test_pickle_serializer_still_available(peers: list[Peer]) -> None:
    server, client = Peer("server"), Peer("client")
    peers += [server, client]
    snakemq.rpc.RpcServer(
        snakemq.messaging.ReceiveHook(server.messaging), pickler=pickle
    ).register_object(Service(), "svc")
    rpc_client = snakemq.rpc.RpcClient(
        snakemq.messaging.ReceiveHook(client.messaging), pickler=pickle
    )
    port = server.listen()
    server.start()
    client.connect(port)
    client.start()
    client.wait_connected("server")
    assert rpc_client.get_proxy("server", "svc").echo((1, b"x")) == (1, b"x")


def test_json_pickler_round_trip_and_refusals() -> None:
    p = snakemq.rpc.JsonPickler()
    assert p.loads(p.dumps({"a": [b"\x01", 2.5, True]})) == {"a": [b"\x01", 2.5, True]}
    with pytest.raises(p.PickleError, match="cannot send a object"):
        p.dumps(object())
    with pytest.raises(p.PickleError):
        p.loads(b"\x80\x04not json")


def test_no_call_is_left_waiting_1_6_attribute(rpc_pair: Any) -> None:
    client = rpc_pair[3]
    assert client.get_proxy("server", "svc").add(1, 1) == 2
    assert client.waiting_for_result == set()


class Gate:
    """A method that blocks until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.changed = threading.Condition()
        self.running = self.most = self.done = 0

    @snakemq.rpc.as_signal
    def wait(self) -> None:
        with self.changed:
            self.running += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
        assert self.release.wait(WAIT)
        with self.changed:
            self.running -= 1
            self.done += 1
            self.changed.notify_all()

    def wait_until(self, predicate: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, WAIT)

    def call(self) -> str:
        return "ran"


def test_server_threads_are_bounded_and_excess_requests_refused(peers: list[Peer]) -> None:
    server, client = Peer("server"), Peer("client")
    peers += [server, client]
    gate = Gate()
    rpc_server = snakemq.rpc.RpcServer(
        snakemq.messaging.ReceiveHook(server.messaging), max_threads=4, max_pending=20
    )
    rpc_server.register_object(gate, "gate")
    rpc_client = snakemq.rpc.RpcClient(snakemq.messaging.ReceiveHook(client.messaging))
    port = server.listen()
    server.start()
    client.connect(port)
    client.start()
    client.wait_connected("server")
    threads_before = threading.active_count()
    proxy = rpc_client.get_proxy("server", "gate")
    proxy.wait.as_signal(10)
    for _ in range(24):  # 4 run, 20 wait
        proxy.wait()
    server.rec.wait_count("on_message_recv", 24)
    gate.wait_until(lambda: gate.running == 4)
    assert threading.active_count() - threads_before == 4
    with pytest.raises(RuntimeError, match="RPC server busy"):
        proxy.call()  # the 25th request is answered at once
    gate.release.set()
    gate.wait_until(lambda: gate.done == 24)
    assert gate.most == 4
    assert proxy.call() == "ran"
    with pytest.raises(ValueError, match="max_threads"):
        snakemq.rpc.RpcServer(snakemq.messaging.ReceiveHook(server.messaging), max_threads=0)
