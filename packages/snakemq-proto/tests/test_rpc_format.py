"""The shared RPC format: safe serializer, request/reply codec, at-most-once."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from snakemq_proto import rpc

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(json_values)
# dicts a peer could mistake for the pickler's tags (Hypothesis found the first)
@example({"__exception__": None})
@example({"__bytes__": "aGk="})
@example({"__dict__": {"__exception__": "ValueError"}})
@example([{"__dict__": 1}, {"__bytes__": b"x"}])
def test_json_pickler_round_trips(value: Any) -> None:
    p = rpc.JsonPickler()
    assert p.loads(p.dumps(value)) == value


def test_json_pickler_refuses_what_it_cannot_carry() -> None:
    p = rpc.JsonPickler()
    with pytest.raises(p.PickleError, match="cannot send a object"):
        p.dumps(object())
    with pytest.raises(p.PickleError, match="only str dictionary keys"):
        p.dumps({1: 2})


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_pickle_payload_is_not_a_request_for_the_json_pickler() -> None:
    payload = pickle.dumps({"command": "call", "object": "o", "method": "m", "x": _Exploit()})
    with pytest.raises(ValueError, match="cannot decode the request"):
        rpc.decode_request(rpc.JsonPickler(), payload)


@pytest.mark.parametrize(
    "params",
    [
        [1, 2],
        {"command": "exec", "object": "o", "method": "m"},
        {"command": "call", "object": 1, "method": "m", "req_id": "x"},
        {"command": "call", "object": "o", "method": "m"},
    ],
)
def test_malformed_requests_are_refused(params: Any) -> None:
    p = rpc.JsonPickler()
    with pytest.raises(ValueError):
        rpc.decode_request(p, p.dumps(params))


def test_exceptions_come_back_as_builtin_or_remote_error() -> None:
    p = rpc.JsonPickler()
    try:
        raise KeyError("k")
    except KeyError as exc:
        raw = rpc.encode_exception(p, "id", exc)
    key, reply = rpc.decode_reply(p, raw[len(rpc.REPLY_PREFIX) :])
    assert key == "id"
    with pytest.raises(KeyError) as info:
        rpc.reply_result(reply)
    assert "Traceback" in getattr(info.value, rpc.REMOTE_TRACEBACK_ATTR)

    class Private(Exception):
        pass

    raw = rpc.encode_exception(p, "id2", Private("secret sauce"))
    with pytest.raises(rpc.RemoteError, match="Private: secret sauce"):
        rpc.reply_result(rpc.decode_reply(p, raw[len(rpc.REPLY_PREFIX) :])[1])


def test_unencodable_result_becomes_an_error_reply() -> None:
    p = rpc.JsonPickler()
    raw = rpc.encode_return(p, "id", object())
    with pytest.raises(rpc.RemoteError, match="cannot send a object"):
        rpc.reply_result(rpc.decode_reply(p, raw[len(rpc.REPLY_PREFIX) :])[1])


def test_reply_memory_runs_each_call_at_most_once() -> None:
    memory = rpc.ReplyMemory(size=2)
    assert memory.begin("a", "1") == "run"
    assert memory.begin("a", "1") == "running"
    assert memory.begin("b", "1") == "run"  # the same id from another peer is another call
    memory.finish("a", "1", b"reply")
    assert memory.begin("a", "1") == b"reply"
    memory.finish("b", "1", b"r2")
    assert memory.begin("c", "1") == "run"
    memory.finish("c", "1", b"r3")
    assert memory.begin("a", "1") == "run"  # forgotten beyond the memory size


def test_resolve_method_never_exposes_private_names() -> None:
    class Service:
        def ok(self) -> int:
            return 1

        def _private(self) -> None:
            raise AssertionError

    instances = {"s": Service()}
    method, transfer = rpc.resolve_method(
        instances, {"object": "s", "method": "ok", "command": "call"}
    )
    assert method() == 1 and transfer
    with pytest.raises(rpc.NoMethodError):
        rpc.resolve_method(instances, {"object": "s", "method": "_private", "command": "call"})
    with pytest.raises(rpc.NoMethodError):
        rpc.resolve_method(instances, {"object": "s", "method": "__class__", "command": "call"})
    with pytest.raises(rpc.NoInstanceError):
        rpc.resolve_method(instances, {"object": "x", "method": "ok", "command": "call"})


def _params(method: str, command: str = "call") -> dict[str, Any]:
    return {"command": command, "object": "s", "method": method, "args": [2], "req_id": "r1"}


class _Service:
    def double(self, x: int) -> int:
        return 2 * x

    @rpc.as_signal
    def note(self, x: int) -> None:
        pass


def test_invocation_reply_rules_and_memory() -> None:
    p, memory = rpc.JsonPickler(), rpc.ReplyMemory()
    instances = {"s": _Service()}
    assert memory.begin("peer", "r1") == "run"
    call = rpc.Invocation.start("peer", _params("double"), instances, p, memory)
    assert call.method is not None and call.args == (2,)
    reply = call.returned(call.method(*call.args))
    assert reply is not None
    assert rpc.reply_result(rpc.decode_reply(p, reply[len(rpc.REPLY_PREFIX) :])[1]) == 4
    assert memory.begin("peer", "r1") == reply  # a repeat is answered from memory

    missing = rpc.Invocation.start("peer", _params("nope"), instances, p, memory)
    assert missing.method is None and isinstance(missing.refusal, rpc.NoMethodError)
    refused = missing.failed(missing.refusal)
    assert refused is not None
    with pytest.raises(rpc.RemoteError, match="NoMethodError"):
        rpc.reply_result(rpc.decode_reply(p, refused[len(rpc.REPLY_PREFIX) :])[1])

    signal = rpc.Invocation.start("peer", _params("note", "signal"), instances, p, memory)
    assert signal.returned(None) is None
    assert signal.failed(ValueError("x")) is None  # nobody waits for a signal's reply


def test_abandoned_call_may_run_again() -> None:
    p, memory = rpc.JsonPickler(), rpc.ReplyMemory()
    assert memory.begin("peer", "r1") == "run"
    call = rpc.Invocation.start("peer", _params("double"), {"s": _Service()}, p, memory)
    call.abandon()
    assert memory.begin("peer", "r1") == "run"


def test_admit_request_serves_a_call_once_and_answers_its_repeats() -> None:
    p = rpc.JsonPickler()
    memory = rpc.ReplyMemory()
    params = {"command": "call", "object": "o", "method": "m", "args": [], "kwargs": {}}
    key = rpc.new_call(p, params)
    payload = p.dumps(params)
    admitted, repeat = rpc.admit_request(p, memory, "bob", payload)
    assert admitted == params and repeat is None
    assert rpc.admit_request(p, memory, "bob", payload) == (None, None)  # still running
    call = rpc.Invocation.start("bob", admitted, {"o": _Target()}, p, memory)
    reply = call.returned(5)
    assert reply is not None
    assert rpc.decode_reply(p, reply[len(rpc.REPLY_PREFIX) :])[0] == key
    assert rpc.admit_request(p, memory, "bob", payload) == (None, reply)  # answered again
    assert rpc.admit_request(p, memory, "alice", payload)[0] == params  # another caller's
    signal = {**params, "command": "signal"}
    del signal["req_id"]
    assert rpc.admit_request(p, memory, "bob", p.dumps(signal)) == (signal, None)  # no memory
    with pytest.raises(ValueError, match="cannot decode"):
        rpc.admit_request(p, memory, "bob", b"\x80not json")


def test_no_reply_error_says_whether_the_call_may_have_run() -> None:
    params = {"object": "o", "method": "m"}
    never = rpc.no_reply_error("bob", params, 2.0, sent=False)
    maybe = rpc.no_reply_error("bob", params, 2.0, sent=True)
    assert type(never) is rpc.NotConnected and type(maybe) is rpc.PartialCall
    assert str(maybe) == "no reply from 'bob' to o.m() within 2.0 s"


class _Target:
    def m(self) -> int:
        return 5
