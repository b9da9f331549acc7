"""Every (connection state, frame type) pair, from outside: the frames the
session's transition table allows in a state are taken (whatever their
content then says), every other known frame type is an UnexpectedFrameError,
and a frame type this version does not know is ignored in every state."""

from __future__ import annotations

import pytest
from helpers import packets
from snakemq_proto import (
    CAP_ACK,
    Ack,
    Capabilities,
    Engine,
    ErrorOccurred,
    Frame,
    Identification,
    IncompatibleProtocol,
    MessageFrame,
    Ping,
    Pong,
    ProtocolVersion,
    UnexpectedFrameError,
)

UUID = bytes(range(16))

SAMPLES: dict[str, Frame] = {
    "PROTOCOL_VERSION": ProtocolVersion(),
    "INCOMPATIBLE_PROTOCOL": IncompatibleProtocol(),
    "IDENTIFICATION": Identification("bob"),
    "MESSAGE": MessageFrame(UUID, None, 0, b"x"),
    "PING": Ping(),
    "PONG": Pong(),
    "CAPABILITIES": Capabilities(CAP_ACK, 8),
    "ACK": Ack(1, UUID),
}

# what the protocol allows (PROTOCOL.md); the table in _session.py must agree
ALLOWED = {
    "await-version": {"PROTOCOL_VERSION", "INCOMPATIBLE_PROTOCOL"},
    "await-ident": {"CAPABILITIES", "IDENTIFICATION", "PING", "PONG", "INCOMPATIBLE_PROTOCOL"},
    "active": {"MESSAGE", "ACK", "PING", "PONG", "INCOMPATIBLE_PROTOCOL"},
}

# the bytes that bring a fresh connection into each state
REACH = {
    "await-version": b"",
    "await-ident": packets(ProtocolVersion()),
    "active": packets(ProtocolVersion(), Capabilities(CAP_ACK, 8), Identification("bob")),
}


def engine_in(state: str) -> Engine:
    e = Engine("alice")
    e.connection_made("c", 0.0)
    e.data_to_send("c")
    if REACH[state]:
        events = e.receive_data("c", REACH[state], 0.0)
        assert not [x for x in events if isinstance(x, ErrorOccurred)]
    return e


@pytest.mark.parametrize("state", sorted(ALLOWED))
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_state_and_frame_type(state: str, name: str) -> None:
    e = engine_in(state)
    events = e.receive_data("c", packets(SAMPLES[name]), 0.0)
    unexpected = [
        x for x in events if isinstance(x, ErrorOccurred) and type(x.error) is UnexpectedFrameError
    ]
    if name in ALLOWED[state]:
        assert unexpected == [], f"{name} in {state}"
    else:
        assert len(unexpected) == 1, f"{name} in {state}"
        assert f"not allowed in state {state}" in str(unexpected[0].error)


@pytest.mark.parametrize("state", sorted(ALLOWED))
def test_an_unknown_frame_type_is_ignored_in_every_state(state: str) -> None:
    e = engine_in(state)
    assert e.receive_data("c", packets(b"\x7fwhatever"), 0.0) == []
    # and the connection goes on as if it had not come
    after: Frame = ProtocolVersion() if state == "await-version" else Ping()
    assert [
        x for x in e.receive_data("c", packets(after), 0.0) if isinstance(x, ErrorOccurred)
    ] == []
