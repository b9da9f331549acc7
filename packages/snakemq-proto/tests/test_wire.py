"""The wire codec: frames, packets, the incremental decoder, bad input."""

from __future__ import annotations

import struct
from collections import deque

import pytest
import snakemq_proto._wire as wire
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemq_proto import (
    CAP_ACK,
    DEFAULT_MAX_PACKET_SIZE,
    MAX_IDENT_LENGTH,
    MAX_TTL,
    PROTOCOL_VERSION,
    Ack,
    Capabilities,
    Frame,
    Identification,
    IncompatibleProtocol,
    MalformedFrameError,
    Message,
    MessageFrame,
    PacketDecoder,
    PacketTooLargeError,
    Ping,
    Pong,
    ProtocolVersion,
    RemoteProtocolError,
    decode_frame,
    encode_packet,
)

u32 = st.integers(0, 0xFFFFFFFF)
uuids = st.binary(min_size=16, max_size=16)
# identifiers with control or format characters are refused (they could forge log lines)
idents = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Zl", "Zp")),
    min_size=1,
    max_size=MAX_IDENT_LENGTH,
)
wire_ttls = st.none() | st.integers(0, MAX_TTL)


def message_frames() -> st.SearchStrategy[MessageFrame]:
    return st.builds(MessageFrame, uuids, wire_ttls, u32, st.binary(max_size=300))


frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(ProtocolVersion, u32),
    st.just(IncompatibleProtocol()),
    st.builds(Identification, idents),
    message_frames(),
    st.just(Ping()),
    st.just(Pong()),
    st.builds(Capabilities, u32, st.integers(1, 0xFFFFFFFF)),
    st.builds(Ack, st.integers(1, 0xFFFFFFFF), uuids),
)


def same(a: Frame | None, b: Frame | None) -> bool:
    """Frame equality including MessageFrame.data (excluded from __eq__)."""
    if isinstance(a, MessageFrame) and isinstance(b, MessageFrame):
        return a == b and bytes(a.data) == bytes(b.data)
    return a == b


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


# ----------------------------------------------------------------- round trips


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    payload = frame.encode()
    decoded = decode_frame(payload)
    assert same(decoded, frame)
    assert decoded is not None
    assert decoded.encode() == payload


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(frames)
def test_decode_of_a_memoryview_or_bytearray_packet(frame: Frame) -> None:
    payload = frame.encode()
    assert same(decode_frame(memoryview(payload)), frame)
    assert same(decode_frame(bytearray(payload)), frame)  # type: ignore[arg-type]


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_decoder_accepts_any_chunking(items: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_packet(f.encode()) for f in items)
    decoder = PacketDecoder()
    got: list[bytes] = []
    for chunk in chunked(stream, cuts):
        got += [bytes(p) for p in decoder.feed(chunk)]
    assert got == [f.encode() for f in items]
    assert decoder.buffered == 0


@settings(deadline=None)  # timing is for benchmarks, not tests
@given(st.lists(frames, min_size=1, max_size=4))
def test_decoder_one_byte_at_a_time(items: list[Frame]) -> None:
    stream = b"".join(encode_packet(f.encode()) for f in items)
    decoder = PacketDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += [bytes(p) for p in decoder.feed(stream[i : i + 1])]
        assert decoder.buffered == (i + 1) - sum(len(g) + 4 for g in got)
    assert got == [f.encode() for f in items]


def test_decoder_reads_a_reused_buffer_without_copying_packets_and_keeps_a_copy_of_the_tail() -> (
    None
):
    decoder = PacketDecoder()
    buf = bytearray(encode_packet(Ping().encode()) + encode_packet(Pong().encode())[:3])
    out = decoder.feed(memoryview(buf))
    assert [bytes(p) for p in out] == [b"\x04"]  # used before the buffer changes...
    assert out[0].obj is buf  # ...because it is a view of it, not a copy
    buf[:] = b"\xff" * len(buf)  # the I/O layer reuses its read buffer
    assert [bytes(p) for p in decoder.feed(memoryview(b"\x01\x05"))] == [b"\x05"]


def test_decoder_completing_a_packet_from_a_reused_buffer_keeps_nothing_of_it() -> None:
    decoder = PacketDecoder()
    stream = encode_packet(b"a" * 10) + encode_packet(b"b" * 10)
    buf = bytearray(stream[:5])
    assert decoder.feed(buf) == []
    buf[:] = b"\xff" * 5
    buf2 = bytearray(stream[5:20])
    [first] = decoder.feed(buf2)
    buf2[:] = b"\xff" * 15
    assert bytes(first) == b"a" * 10  # the join copied the new data too
    assert [bytes(p) for p in decoder.feed(stream[20:])] == [b"b" * 10]


def test_large_packet_in_small_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_packet(MessageFrame(b"u" * 16, None, 0, body).encode())
    decoder = PacketDecoder()
    got = []
    for i in range(0, len(stream), 1000):
        got += decoder.feed(stream[i : i + 1000])
        assert decoder.buffered == min(i + 1000, len(stream)) - 4 * len(got) - sum(
            len(g) for g in got
        )
    assert len(got) == 1
    frame = decode_frame(got[0])
    assert isinstance(frame, MessageFrame)
    assert bytes(frame.data) == body


def test_message_data_is_a_slice_not_a_copy() -> None:
    payload = MessageFrame(b"u" * 16, 5, 0, b"payload").encode()
    view = memoryview(payload)
    frame = decode_frame(view)
    assert isinstance(frame, MessageFrame)
    assert isinstance(frame.data, memoryview)
    assert frame.data.obj is payload


# ------------------------------------------------------ snakeMQ 1.6 byte for byte

# Produced by snakeMQ 1.6's own Messaging.frame_* methods and packeter.size_to_bin
# (ident "bob"; uuid 00..0f).
LEGACY_PACKETS: list[tuple[str, Frame]] = [
    ("000000050000000001", ProtocolVersion(1)),
    ("0000000101", IncompatibleProtocol()),
    ("0000000402626f62", Identification("bob")),
    (
        "0000001e03000102030405060708090a0b0c0d0e0f0000003c0000000168656c6c6f",
        MessageFrame(bytes(range(16)), 60, 1, b"hello"),
    ),
    (
        "0000001903000102030405060708090a0b0c0d0e0fffffffff00000000",
        MessageFrame(bytes(range(16)), None, 0, b""),
    ),
    (
        "0000001a03000102030405060708090a0b0c0d0e0f000000020000000078",
        MessageFrame(bytes(range(16)), 2, 0, b"x"),  # 1.6 sends int(2.9)
    ),
    ("0000000104", Ping()),
    ("0000000105", Pong()),
    (
        "0000001402c5be6c75c5a56f75c48d6bc3bd206bc5afc588",
        Identification("žluťoučký kůň"),
    ),
]


@pytest.mark.parametrize(("hexstr", "frame"), LEGACY_PACKETS)
def test_legacy_packets_decode_and_reencode_identically(hexstr: str, frame: Frame) -> None:
    raw = bytes.fromhex(hexstr)
    (packet,) = PacketDecoder().feed(raw)
    decoded = decode_frame(packet)
    assert same(decoded, frame)
    assert decoded is not None
    assert encode_packet(decoded.encode()) == raw
    assert encode_packet(frame.encode()) == raw


def test_legacy_handshake_stream() -> None:
    # what a 1.6 peer "bob" writes on connect: version, then identification
    stream = bytes.fromhex("0000000500000000010000000402626f62")
    packets = PacketDecoder().feed(stream)
    assert [decode_frame(p) for p in packets] == [ProtocolVersion(1), Identification("bob")]


# ------------------------------------------------------------- extension frames


def test_capabilities_layout() -> None:
    assert Capabilities(CAP_ACK, 4096).encode() == bytes.fromhex("400000000100001000")


def test_capabilities_ignores_unknown_bits_and_trailing_bytes() -> None:
    raw = bytes.fromhex("408000000300000010deadbeef")
    assert decode_frame(raw) == Capabilities(0x80000003, 16)
    assert decode_frame(raw[:9]) == Capabilities(0x80000003, 16)


def test_capabilities_without_ack_may_have_window_0() -> None:
    assert decode_frame(bytes.fromhex("400000000000000000")) == Capabilities(0, 0)


def test_ack_layout() -> None:
    uuid = bytes(range(16))
    assert Ack(3, uuid).encode() == bytes.fromhex("4100000003") + uuid


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 0xFFFFFFFF), uuids)
def test_fast_ack_path_is_the_ack_frame(count: int, uuid: bytes) -> None:
    # the session's hot path writes and reads ACKs without Ack objects
    packet = wire.encode_ack_packet(count, uuid)
    assert packet == encode_packet(Ack(count, uuid).encode())
    assert wire.decode_ack(packet[4:]) == (count, uuid)
    assert decode_frame(memoryview(packet)[4:]) == Ack(count, uuid)


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"\x41\x00\x00\x00", "expected 21"), (b"\x41" + bytes(20), "acknowledges 0")],
)
def test_fast_ack_decode_refuses_what_the_frame_decoder_refuses(body: bytes, error: str) -> None:
    for decode in (wire.decode_ack, decode_frame):
        with pytest.raises(MalformedFrameError, match=error):
            decode(body)


def test_protocol_version_constant() -> None:
    assert PROTOCOL_VERSION == 1
    assert ProtocolVersion().encode() == b"\x00\x00\x00\x00\x01"


@pytest.mark.parametrize("ftype", [6, 7, 0x3F, 0x42, 0x80, 0xFF])
def test_unknown_frame_types_decode_to_none(ftype: int) -> None:
    assert decode_frame(bytes([ftype])) is None
    assert decode_frame(bytes([ftype]) + b"anything at all") is None


# -------------------------------------------------------------------- bad input

MALFORMED: list[tuple[str, bytes]] = [
    ("empty packet", b""),
    ("PROTOCOL_VERSION too short", b"\x00\x00\x00\x01"),
    ("PROTOCOL_VERSION too long", b"\x00\x00\x00\x00\x01\x00"),
    ("INCOMPATIBLE_PROTOCOL with a body", b"\x01\x00"),
    ("IDENTIFICATION empty", b"\x02"),
    ("IDENTIFICATION bad UTF-8", b"\x02\xff\xfe"),
    ("IDENTIFICATION truncated UTF-8", b"\x02ab\xc5"),
    ("IDENTIFICATION surrogate", b"\x02\xed\xa0\x80"),
    ("IDENTIFICATION 51 characters", b"\x02" + b"x" * 51),
    ("IDENTIFICATION 51 two-byte characters", b"\x02" + "ž".encode() * 51),
    ("IDENTIFICATION 201 bytes", b"\x02" + b"x" * 201),
    ("MESSAGE with nothing", b"\x03"),
    ("MESSAGE truncated uuid", b"\x03" + b"u" * 15),
    ("MESSAGE truncated ttl", b"\x03" + b"u" * 16 + b"\x00\x00"),
    ("MESSAGE truncated flags", b"\x03" + b"u" * 16 + b"\x00" * 4 + b"\x00\x00\x00"),
    ("PING with a body", b"\x04\x00"),
    ("PONG with a body", b"\x05pong"),
    ("CAPABILITIES truncated", b"\x40\x00\x00\x00\x01\x00\x00\x10"),
    ("CAPABILITIES ack with window 0", b"\x40\x00\x00\x00\x01\x00\x00\x00\x00"),
    ("ACK truncated", b"\x41\x00\x00\x00\x01" + b"u" * 15),
    ("ACK of 0 messages", b"\x41\x00\x00\x00\x00" + b"u" * 16),
]


@pytest.mark.parametrize(("why", "payload"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_frames_raise_the_typed_error(why: str, payload: bytes) -> None:
    with pytest.raises(MalformedFrameError):
        decode_frame(payload)
    with pytest.raises(MalformedFrameError):
        decode_frame(memoryview(payload))


def test_ident_of_exactly_50_characters_is_accepted() -> None:
    ident = "ž" * MAX_IDENT_LENGTH
    assert decode_frame(Identification(ident).encode()) == Identification(ident)


def test_malformed_is_a_remote_protocol_error() -> None:
    assert issubclass(MalformedFrameError, RemoteProtocolError)
    assert issubclass(PacketTooLargeError, RemoteProtocolError)


def test_oversized_header_raises_before_the_body_is_buffered() -> None:
    decoder = PacketDecoder(max_packet_size=100)
    with pytest.raises(PacketTooLargeError, match="101 bytes"):
        decoder.feed(struct.pack("!I", 101) + b"x" * 50)
    assert decoder.buffered == 0


def test_oversized_header_one_byte_at_a_time() -> None:
    decoder = PacketDecoder(max_packet_size=100)
    header = struct.pack("!I", 101)
    for b in header[:3]:
        assert decoder.feed(bytes([b])) == []
    with pytest.raises(PacketTooLargeError):
        decoder.feed(header[3:])
    assert decoder.buffered == 0


def test_http_request_is_refused_at_once() -> None:
    # 1.6 read "GET " as a 1.2 GB length and started buffering
    decoder = PacketDecoder()
    with pytest.raises(PacketTooLargeError):
        decoder.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert decoder.buffered == 0


def test_maximum_size_itself_is_accepted() -> None:
    decoder = PacketDecoder(max_packet_size=10)
    assert [bytes(p) for p in decoder.feed(struct.pack("!I", 10) + b"0123456789")] == [
        b"0123456789"
    ]


def test_packets_before_an_oversized_header_are_returned_first() -> None:
    decoder = PacketDecoder(max_packet_size=100)
    good = encode_packet(Ping().encode())
    out = decoder.feed(good + struct.pack("!I", 1000) + b"x" * 100)
    assert [bytes(p) for p in out] == [b"\x04"]
    assert decoder.pending_error
    assert decoder.buffered == 4  # the header only, never the body
    with pytest.raises(PacketTooLargeError):
        decoder.feed(b"")
    assert decoder.buffered == 0


def test_zero_length_packet_is_framed_and_then_refused_by_decode() -> None:
    (packet,) = PacketDecoder().feed(b"\x00\x00\x00\x00")
    assert len(packet) == 0
    with pytest.raises(MalformedFrameError, match="empty packet"):
        decode_frame(packet)


def test_default_max_packet_size() -> None:
    assert PacketDecoder().max_packet_size == DEFAULT_MAX_PACKET_SIZE


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), ("9", TypeError)])
def test_decoder_refuses_a_bad_maximum(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_packet_size"):
        PacketDecoder(value)  # type: ignore[arg-type]


# ----------------------------------------------------- frames validate when built


@pytest.mark.parametrize(
    "build",
    [
        lambda: Identification(""),
        lambda: Identification("x" * 51),
        lambda: MessageFrame(b"short", 1, 0, b""),
        lambda: MessageFrame(b"u" * 16, -1, 0, b""),
        lambda: MessageFrame(b"u" * 16, 0xFFFFFFFF, 0, b""),
        lambda: MessageFrame(b"u" * 16, 1, 2**32, b""),
        lambda: Capabilities(2**32, 1),
        lambda: Capabilities(CAP_ACK, 0),
        lambda: Ack(0, b"u" * 16),
        lambda: Ack(1, b"u"),
        lambda: ProtocolVersion(-1),
    ],
)
def test_frames_refuse_invalid_fields(build: object) -> None:
    assert callable(build)
    with pytest.raises((ValueError, TypeError)):
        build()


# ------------------------------------------------------------ PROTOCOL.md examples


def test_every_hex_example_in_protocol_md_is_right() -> None:
    import pathlib
    import re

    doc = pathlib.Path(__file__).parent.parent / "PROTOCOL.md"
    blocks = re.findall(r"```hex\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 10
    seen_types = set()
    for block in blocks:
        raw = bytes.fromhex(block.replace("\n", " "))
        decoder = PacketDecoder()
        frames = [decode_frame(p) for p in decoder.feed(raw)]
        assert decoder.buffered == 0, block
        assert frames and all(f is not None for f in frames), block
        assert b"".join(encode_packet(f.encode()) for f in frames if f is not None) == raw
        seen_types |= {type(f) for f in frames}
    assert seen_types == {
        ProtocolVersion,
        IncompatibleProtocol,
        Identification,
        MessageFrame,
        Ping,
        Pong,
        Capabilities,
        Ack,
    }


# ------------------------------------- the MESSAGE batch paths and the frame registry
# (private: the engine's fast loops, pinned to the layout MessageFrame spells out)

UUID_A = bytes(range(16))


class _Queued:
    """What the engine's queue hands encode_messages(): a message, its remaining TTL."""

    def __init__(self, message: Message, ttl: float | None) -> None:
        self.message = message
        self.ttl = ttl


remaining_ttls = st.none() | st.floats(0, 2.0**33, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=200), remaining_ttls, u32, uuids), min_size=1, max_size=20
    ),
    st.integers(1, 2000),
)
def test_batch_encode_is_message_frame_bytes(
    fields: list[tuple[bytes, float | None, int, bytes]], limit: int
) -> None:
    items = [_Queued(Message(d, ttl=None, flags=f, uuid=u), t) for d, t, f, u in fields]
    out: list[bytes] = [b"hello"]
    ends: deque[tuple[int, _Queued]] = deque()
    count, size = wire.encode_messages(iter(items), out, ends, 100, 5, limit)
    data = b"".join(out)
    assert size == len(data)
    # stops once the limit is reached, never before
    assert count == len(items) or size >= limit
    assert count == 0 if limit <= 5 else count >= 1
    expected = b"hello" + b"".join(
        encode_packet(
            MessageFrame(
                i.message.uuid,
                None if i.ttl is None else min(int(i.ttl), MAX_TTL),
                i.message.flags,
                i.message.data,
            ).encode()
        )
        for i in items[:count]
    )
    assert data == expected
    # each end mark is the stream position right after its packet
    assert [item for _, item in ends] == items[:count]
    assert [end for end, _ in ends] == [
        100 + 5 + sum(len(i.message.data) + 29 for i in items[: n + 1]) for n in range(count)
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(message_frames(), min_size=1, max_size=20), st.sampled_from([b"", b"\x04"]))
def test_batch_decode_is_decode_frame(sent: list[MessageFrame], tail: bytes) -> None:
    packets = PacketDecoder().feed(
        b"".join(encode_packet(f.encode()) for f in sent) + (encode_packet(tail) if tail else b"")
    )
    got = wire.decode_messages(packets, 0)
    assert [(m.uuid, m.ttl, m.flags, m.data) for m in got] == [
        (f.uuid, None if f.ttl is None else float(f.ttl), f.flags, bytes(f.data)) for f in sent
    ]
    assert all(type(m.data) is bytes for m in got)  # copies: the buffer may be reused


def test_batch_decode_stops_at_a_short_message_and_raises_only_there() -> None:
    good = MessageFrame(UUID_A, None, 0, b"ok").encode()
    packets = PacketDecoder().feed(encode_packet(good) + encode_packet(b"\x03short"))
    assert [m.data for m in wire.decode_messages(packets, 0)] == [b"ok"]
    with pytest.raises(MalformedFrameError, match="shorter than its 25-byte head"):
        wire.decode_messages(packets, 1)


def test_every_frame_type_is_registered_once() -> None:
    types = {v for k, v in vars(wire).items() if k.startswith("FRAME_")}
    assert types == wire.KNOWN_FRAME_TYPES
    assert decode_frame(b"\x7f") is None  # not registered: ignored


@pytest.mark.parametrize("ident", ["a\nb", "esc\x1b[2J", "nul\x00", "bidi\u202etxt", "ls\u2028"])
def test_identifiers_with_control_characters_are_refused(ident: str) -> None:
    with pytest.raises(MalformedFrameError, match="control or format"):
        decode_frame(b"\x02" + ident.encode())
    with pytest.raises(ValueError, match="control or format"):
        Identification(ident)
