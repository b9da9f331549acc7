"""Message: validation that names the argument, uuids, TTL limits."""

from __future__ import annotations

import math
import os
import threading
import uuid as uuidlib

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemq_proto import (
    FLAG_PERSISTENT,
    INFINITE_TTL,
    MAX_IDENT_LENGTH,
    MAX_TTL,
    MAX_UUID_LENGTH,
    UUID_LENGTH,
    Message,
    check_ident,
    check_ttl,
    new_uuid,
)


def test_defaults() -> None:
    m = Message(b"data")
    assert m.data == b"data"
    assert m.ttl == 0
    assert m.flags == 0
    assert len(m.uuid) == UUID_LENGTH == MAX_UUID_LENGTH == 16
    assert not m.persistent


def test_persistent_flag() -> None:
    assert FLAG_PERSISTENT == 0x1
    assert Message(b"", flags=FLAG_PERSISTENT).persistent


def test_generated_uuids_are_version_4_and_unique() -> None:
    uuids = {Message(b"").uuid for _ in range(1000)}
    assert len(uuids) == 1000
    for raw in list(uuids)[:50]:
        parsed = uuidlib.UUID(bytes=raw)
        assert parsed.version == 4
        assert parsed.variant == uuidlib.RFC_4122
    assert uuidlib.UUID(bytes=new_uuid()).version == 4


def test_uuids_are_version_4_across_batches_and_threads() -> None:
    # more than one batch of pre-made uuids, taken by several threads at once
    taken: list[list[bytes]] = [[] for _ in range(4)]

    def take(out: list[bytes]) -> None:
        out.extend(Message(b"").uuid for _ in range(700))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    uuids = [u for out in taken for u in out] + [new_uuid() for _ in range(300)]
    assert len(set(uuids)) == len(uuids) == 3100
    for raw in uuids:
        parsed = uuidlib.UUID(bytes=raw)
        assert parsed.version == 4 and parsed.variant == uuidlib.RFC_4122


def test_a_forked_child_does_not_reuse_the_parents_uuids() -> None:
    Message(b"")  # a batch is made: the rest of it waits in this process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next uuids, to the parent
        try:
            os.write(write_end, b"".join(Message(b"").uuid for _ in range(10)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(Message(b"").uuid for _ in range(10))
    assert len(child) == 160
    assert child != parent


def test_given_uuid_is_kept() -> None:
    raw = bytes(range(16))
    assert Message(b"", uuid=raw).uuid == raw


def test_message_is_frozen() -> None:
    m = Message(b"x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.data = b"y"  # type: ignore[misc]


def test_equality_and_repr() -> None:
    raw = bytes(16)
    assert Message(b"a", ttl=1, uuid=raw) == Message(b"a", ttl=1, uuid=raw)
    assert Message(b"a", uuid=raw) != Message(b"b", uuid=raw)
    r = repr(Message(b"abc", ttl=None, flags=1, uuid=raw))
    assert "00" * 16 in r and "len=3" in r and "None" in r
    assert "abc" not in r  # payloads stay out of logs


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"data": "text"}, TypeError, "data"),
        ({"data": bytearray(b"x")}, TypeError, "data"),
        ({"data": memoryview(b"x")}, TypeError, "data"),
        ({"data": None}, TypeError, "data"),
        ({"data": b"", "ttl": "1"}, TypeError, "ttl"),
        ({"data": b"", "ttl": True}, TypeError, "ttl"),
        ({"data": b"", "ttl": -1}, ValueError, "ttl"),
        ({"data": b"", "ttl": -0.001}, ValueError, "ttl"),
        ({"data": b"", "ttl": math.nan}, ValueError, "ttl"),
        ({"data": b"", "ttl": math.inf}, ValueError, "ttl"),
        ({"data": b"", "ttl": 2**32 - 1}, ValueError, "ttl"),
        ({"data": b"", "ttl": 2**32}, ValueError, "ttl"),
        ({"data": b"", "ttl": MAX_TTL + 0.5}, ValueError, "ttl"),
        ({"data": b"", "flags": "1"}, TypeError, "flags"),
        ({"data": b"", "flags": 1.0}, TypeError, "flags"),
        ({"data": b"", "flags": True}, TypeError, "flags"),
        ({"data": b"", "flags": -1}, ValueError, "flags"),
        ({"data": b"", "flags": 2**32}, ValueError, "flags"),
        ({"data": b"", "uuid": "0" * 16}, TypeError, "uuid"),
        ({"data": b"", "uuid": bytearray(16)}, TypeError, "uuid"),
        ({"data": b"", "uuid": b"x" * 15}, ValueError, "uuid"),
        ({"data": b"", "uuid": b"x" * 17}, ValueError, "uuid"),
        ({"data": b"", "uuid": b""}, ValueError, "uuid"),
    ],
)
def test_wrong_arguments_raise_naming_the_argument(
    kwargs: dict[str, object], error: type[Exception], argument: str
) -> None:
    with pytest.raises(error, match=argument):
        Message(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [None, 0, 0.0, 0.25, 1, 59.9, MAX_TTL, float(MAX_TTL)])
def test_valid_ttls(ttl: float | None) -> None:
    m = Message(b"", ttl=ttl)
    assert m.ttl == ttl
    assert m.ttl is None or isinstance(m.ttl, float)


def test_ttl_limits() -> None:
    assert INFINITE_TTL == 2**32 - 1
    assert MAX_TTL == 2**32 - 2


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40))
def test_ttl_is_accepted_exactly_when_the_wire_can_carry_it(ttl: float) -> None:
    fits = not math.isnan(ttl) and 0 <= ttl <= MAX_TTL
    if fits:
        assert Message(b"", ttl=ttl).ttl == float(ttl)
    else:
        with pytest.raises(ValueError, match="ttl"):
            Message(b"", ttl=ttl)


def test_with_ttl_keeps_the_uuid_and_validates() -> None:
    m = Message(b"x", ttl=10, flags=FLAG_PERSISTENT)
    m2 = m.with_ttl(3.5)
    assert (m2.uuid, m2.data, m2.flags, m2.ttl) == (m.uuid, m.data, m.flags, 3.5)
    assert m.with_ttl(None).ttl is None
    with pytest.raises(ValueError, match="ttl"):
        m.with_ttl(-1)


def test_check_ttl_names_the_given_argument() -> None:
    with pytest.raises(ValueError, match="timeout"):
        check_ttl(-1, "timeout")
    assert check_ttl(None) is None
    assert check_ttl(3) == 3.0


@pytest.mark.parametrize(
    ("ident", "error"),
    [
        (b"bob", TypeError),
        (None, TypeError),
        (3, TypeError),
        ("", ValueError),
        ("x" * 51, ValueError),
    ],
)
def test_check_ident(ident: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="ident"):
        check_ident(ident)


def test_check_ident_accepts_50_characters_of_any_script() -> None:
    assert MAX_IDENT_LENGTH == 50
    ident = "ž" * 50
    assert check_ident(ident) == ident
