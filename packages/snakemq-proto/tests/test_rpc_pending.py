"""The client's pending calls: the resend-after-reconnect rule and request encoding."""

from __future__ import annotations

import pytest
from snakemq_proto.rpc import (
    REQUEST_PREFIX,
    JsonPickler,
    NotConnected,
    PartialCall,
    PendingCalls,
    encode_request,
    encode_return,
)


def params() -> dict[str, object]:
    return {"command": "call", "object": "calc", "method": "add", "args": [1, 2], "kwargs": {}}


def test_request_encoding() -> None:
    pickler = JsonPickler()
    raw = encode_request(pickler, params())
    assert raw.startswith(REQUEST_PREFIX)
    assert pickler.loads(raw[len(REQUEST_PREFIX) :])["method"] == "add"


def test_sent_once_per_connection_and_again_after_a_reconnect() -> None:
    calls = PendingCalls(JsonPickler())
    call = calls.start("srv", params())
    assert calls.waiting() == {call.key}
    assert calls.request_to_send(call, connected=False) is None
    calls.peer_connected("srv")
    first = calls.request_to_send(call, connected=True)
    assert first is not None
    assert calls.request_to_send(call, connected=True) is None  # same connection
    calls.peer_connected("srv")  # reconnected: the request may have been lost
    again = calls.request_to_send(call, connected=True)
    assert again == first  # same request id: the server runs it at most once


def test_reply_settles_the_call() -> None:
    pickler = JsonPickler()
    calls = PendingCalls(pickler)
    call = calls.start("srv", params())
    calls.peer_connected("srv")
    calls.request_to_send(call, connected=True)
    reply = encode_return(pickler, call.params["req_id"], 3)
    assert calls.reply_received(reply[len(b"rpcrep") :]) is call
    assert calls.waiting() == set()
    assert calls.reply_received(reply[len(b"rpcrep") :]) is None  # a repeat
    assert calls.finish(call) == 3
    assert len(calls) == 0
    with pytest.raises(ValueError, match="reply"):
        calls.reply_received(b"not json")


def test_no_reply_errors() -> None:
    calls = PendingCalls(JsonPickler())
    never_sent = calls.start("srv", params())
    assert isinstance(calls.timed_out(never_sent, 1.0), NotConnected)
    sent = calls.start("srv", params())
    calls.peer_connected("srv")
    calls.request_to_send(sent, connected=True)
    error = calls.timed_out(sent, 1.0)
    assert isinstance(error, PartialCall) and "calc.add" in str(error)
    assert len(calls) == 0
