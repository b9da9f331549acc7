"""The wire codec: packets and frames.

A *packet* is ``[4-byte unsigned big-endian length][payload]``; every payload
holds exactly one *frame*: ``[1-byte frame type][body]``.  Frame types 0-5 are
snakeMQ 1.6's and are encoded byte for byte as 1.6 does; the extension frames
(``CAPABILITIES`` and ``ACK``) use type numbers 1.6 never sent, and 1.6 ignores
frame types it does not know, which is what makes the extensions safe.
``PROTOCOL.md`` beside this file gives every layout with a hex example.

``PacketDecoder`` is incremental: ``feed()`` accepts any chunking of the
stream and returns the complete packets as ``memoryview`` slices of its buffer,
so payloads are not copied on the way to ``decode_frame()``.  A header that
announces more than ``max_packet_size`` bytes raises ``PacketTooLargeError``
before a single byte of the body is buffered.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeAlias, TypeVar

import attrs

from ._errors import MalformedFrameError, PacketTooLargeError
from ._message import (
    INFINITE_TTL,
    MAX_IDENT_LENGTH,
    MAX_TTL,
    UUID_LENGTH,
    Message,
    check_ident,
    unprintable_in,
)

PROTOCOL_VERSION = 1

FRAME_PROTOCOL_VERSION = 0
FRAME_INCOMPATIBLE_PROTOCOL = 1
FRAME_IDENTIFICATION = 2
FRAME_MESSAGE = 3
FRAME_PING = 4
FRAME_PONG = 5
# Extensions.  1.6 ignores unknown frame types; these numbers are far from its.
FRAME_CAPABILITIES = 0x40
FRAME_ACK = 0x41

CAP_ACK = 0x1
"""Capability bit: the peer acknowledges messages, de-duplicates by uuid and
honours the receive window it is told."""

DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
"""64 MiB: the largest packet accepted from a peer unless configured."""

HEADER = struct.Struct("!I")
_MESSAGE_HEAD = struct.Struct("!B16sII")  # type, uuid, ttl, flags
_CAPS = struct.Struct("!BII")  # type, capability bits, receive window
_ACK = struct.Struct("!BI16s")  # type, count, uuid of the last message acknowledged
_ACK_SIZE = _ACK.size
_ACK_PACKET = struct.Struct("!IBI16s")  # the packet header, then _ACK
MESSAGE_HEAD_SIZE = _MESSAGE_HEAD.size


def _bytes_of(buf: bytes | memoryview) -> bytes:
    return buf.tobytes() if isinstance(buf, memoryview) else bytes(buf)


# Validators: a frame built by the program with a field the wire cannot carry
# is refused when built (ValueError/TypeError naming the field), never encoded.
# decode_frame() checks the same limits first and raises MalformedFrameError.


def _u32(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{attribute.name} must fit in 32 bits unsigned, got {value!r}")


def _uuid(instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
    if len(value) != UUID_LENGTH:
        raise ValueError(f"{attribute.name} must be {UUID_LENGTH} bytes, got {len(value)}")


def _ttl_seconds(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ttl must be whole seconds (int) or None, not {type(value).__name__}")
    if not 0 <= value <= MAX_TTL:
        raise ValueError(f"ttl must be 0..{MAX_TTL} seconds or None for infinite, got {value!r}")


def _ident(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_ident(value)


def _data(instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes | memoryview | bytearray):
        raise TypeError(f"data must be bytes or memoryview, not {type(value).__name__}")


@attrs.frozen
class ProtocolVersion:
    """``0``: the protocol version the sender speaks (always 1)."""

    version: int = attrs.field(default=PROTOCOL_VERSION, validator=_u32)

    def encode(self) -> bytes:
        return struct.pack("!BI", FRAME_PROTOCOL_VERSION, self.version)


@attrs.frozen
class IncompatibleProtocol:
    """``1``: the receiver of our version frame does not speak it."""

    def encode(self) -> bytes:
        return b"\x01"


@attrs.frozen
class Identification:
    """``2``: the sender's peer identifier, UTF-8, at most 50 characters."""

    ident: str = attrs.field(validator=_ident)

    def encode(self) -> bytes:
        return b"\x02" + self.ident.encode("utf-8")


@attrs.frozen
class MessageFrame:
    """``3``: one message.  ``ttl`` is whole seconds, ``None`` is infinite."""

    uuid: bytes = attrs.field(validator=_uuid)
    ttl: int | None = attrs.field(validator=_ttl_seconds)
    flags: int = attrs.field(validator=_u32)
    data: bytes | memoryview = attrs.field(eq=False, validator=_data)

    def encode(self) -> bytes:
        return encode_message(self.uuid, self.ttl, self.flags, _bytes_of(self.data))


@attrs.frozen
class Ping:
    """``4``: keepalive request; the receiver answers with ``Pong``."""

    def encode(self) -> bytes:
        return b"\x04"


@attrs.frozen
class Pong:
    """``5``: keepalive answer."""

    def encode(self) -> bytes:
        return b"\x05"


@attrs.frozen
class Capabilities:
    """``0x40`` (extension): capability bits and the sender's receive window.

    ``window`` is how many unacknowledged messages the sender of this frame
    accepts in flight towards it.  Unknown bits and trailing bytes are ignored
    so that later versions can add fields.
    """

    bits: int = attrs.field(validator=_u32)
    window: int = attrs.field(validator=_u32)

    def __attrs_post_init__(self) -> None:
        if self.bits & CAP_ACK and self.window == 0:
            raise ValueError("window must be >= 1 when CAP_ACK is announced")

    def encode(self) -> bytes:
        return _CAPS.pack(FRAME_CAPABILITIES, self.bits, self.window)


@attrs.frozen
class Ack:
    """``0x41`` (extension): cumulative acknowledgement.

    The next ``count`` messages this connection carried towards the sender of
    the ack, the last of which has ``last_uuid``, have been handed to its
    application (or recognised as duplicates).
    """

    count: int = attrs.field(validator=_u32)
    last_uuid: bytes = attrs.field(validator=_uuid)

    def __attrs_post_init__(self) -> None:
        if self.count == 0:
            raise ValueError("count must be >= 1: an ACK acknowledges at least one message")

    def encode(self) -> bytes:
        return _ACK.pack(FRAME_ACK, self.count, self.last_uuid)


Frame: TypeAlias = (
    ProtocolVersion
    | IncompatibleProtocol
    | Identification
    | MessageFrame
    | Ping
    | Pong
    | Capabilities
    | Ack
)


def encode_message(uuid: bytes, ttl: int | None, flags: int, data: bytes) -> bytes:
    """Encode a MESSAGE frame (no packet header) from trusted fields."""
    return (
        _MESSAGE_HEAD.pack(FRAME_MESSAGE, uuid, INFINITE_TTL if ttl is None else ttl, flags) + data
    )


def encode_packet(frame_payload: bytes) -> bytes:
    """Prefix one frame with its 4-byte length."""
    return HEADER.pack(len(frame_payload)) + frame_payload


def encode_ack_packet(count: int, last_uuid: bytes) -> bytes:
    """The packet of ``Ack(count, last_uuid)`` from trusted fields (count
    1..2**32-1, a 16-byte uuid), in one pack: no frame object (hot path)."""
    return _ACK_PACKET.pack(_ACK_SIZE, FRAME_ACK, count, last_uuid)


# ---------------------------------------------------------------- decoding
#
# One decoder per frame type, registered once: the registry is also the list
# of the frame types this version knows (``KNOWN_FRAME_TYPES``), which the
# session needs to tell a frame sent in the wrong state (an error) from one
# of a later version (ignored).

_Decoder: TypeAlias = Callable[[bytes | memoryview], Frame]
_DECODERS: dict[int, _Decoder] = {}


def _decodes(ftype: int) -> Callable[[_Decoder], _Decoder]:
    def register(decoder: _Decoder) -> _Decoder:
        assert ftype not in _DECODERS, ftype
        _DECODERS[ftype] = decoder
        return decoder

    return register


def short_message_error(size: int) -> MalformedFrameError:
    """The error for a MESSAGE packet of ``size`` bytes, too short for its head."""
    return MalformedFrameError(
        f"MESSAGE frame of {size} bytes is shorter than its {MESSAGE_HEAD_SIZE}-byte head"
    )


@_decodes(FRAME_MESSAGE)
def _decode_message(packet: bytes | memoryview) -> Frame:
    if len(packet) < MESSAGE_HEAD_SIZE:
        raise short_message_error(len(packet))
    _, uuid, ttl, flags = _MESSAGE_HEAD.unpack_from(packet)
    return MessageFrame(
        uuid, None if ttl == INFINITE_TTL else ttl, flags, packet[MESSAGE_HEAD_SIZE:]
    )


def decode_ack(packet: bytes | memoryview) -> tuple[int, bytes]:
    """``(count, last_uuid)`` of an ACK packet, without an ``Ack`` object (the
    session's hot path; ``decode_frame`` builds the ``Ack`` from it).

    Raises:
        MalformedFrameError: too short, or a count of 0.
    """
    if len(packet) < _ACK_SIZE:
        raise MalformedFrameError(f"ACK frame of {len(packet)} bytes, expected {_ACK_SIZE}")
    _, count, last_uuid = _ACK.unpack_from(packet)
    if count == 0:
        raise MalformedFrameError("ACK frame acknowledges 0 messages")
    return count, last_uuid


@_decodes(FRAME_ACK)
def _decode_ack(packet: bytes | memoryview) -> Frame:
    return Ack(*decode_ack(packet))


@_decodes(FRAME_PING)
def _decode_ping(packet: bytes | memoryview) -> Frame:
    _expect_empty(packet, "PING")
    return Ping()


@_decodes(FRAME_PONG)
def _decode_pong(packet: bytes | memoryview) -> Frame:
    _expect_empty(packet, "PONG")
    return Pong()


@_decodes(FRAME_PROTOCOL_VERSION)
def _decode_version(packet: bytes | memoryview) -> Frame:
    if len(packet) != 5:
        raise MalformedFrameError(f"PROTOCOL_VERSION frame of {len(packet)} bytes, expected 5")
    return ProtocolVersion(struct.unpack_from("!I", packet, 1)[0])


@_decodes(FRAME_IDENTIFICATION)
def _decode_identification(packet: bytes | memoryview) -> Frame:
    return Identification(decode_ident(packet[1:]))


@_decodes(FRAME_INCOMPATIBLE_PROTOCOL)
def _decode_incompatible(packet: bytes | memoryview) -> Frame:
    _expect_empty(packet, "INCOMPATIBLE_PROTOCOL")
    return IncompatibleProtocol()


@_decodes(FRAME_CAPABILITIES)
def _decode_capabilities(packet: bytes | memoryview) -> Frame:
    if len(packet) < _CAPS.size:
        raise MalformedFrameError(
            f"CAPABILITIES frame of {len(packet)} bytes, expected >= {_CAPS.size}"
        )
    _, bits, window = _CAPS.unpack_from(packet)
    if bits & CAP_ACK and window == 0:
        raise MalformedFrameError("CAPABILITIES frame announces a receive window of 0")
    return Capabilities(bits, window)


KNOWN_FRAME_TYPES = frozenset(_DECODERS)
"""Every frame type this version decodes (the others are ignored)."""


def decode_frame(packet: bytes | memoryview) -> Frame | None:
    """Decode one packet payload into a frame.

    Returns ``None`` for a frame type this version does not know (the protocol
    says such frames are ignored).  ``MessageFrame.data`` is a slice of
    ``packet`` (a ``memoryview`` when ``packet`` is one), not a copy.

    Raises:
        MalformedFrameError: empty packet, wrong body length, invalid field.
    """
    if len(packet) == 0:
        raise MalformedFrameError("empty packet: a packet must hold at least a frame type byte")
    decoder = _DECODERS.get(packet[0])
    return None if decoder is None else decoder(packet)


# ------------------------------------------------ MESSAGE batches (hot path)
#
# The engine moves messages in batches; these two loops are the MESSAGE
# layout of ``MessageFrame`` written for speed: no frame object, one struct
# call per message, the packet header packed with the frame head.

# a MESSAGE packet's header and frame head in one pack: length, type, uuid, ttl, flags
_PACKET_HEAD = struct.Struct("!IB16sII")
_PACKET_HEAD_SIZE = _PACKET_HEAD.size


class Outgoing(Protocol):
    """What ``encode_messages()`` needs of a queued message."""

    @property
    def message(self) -> Message: ...

    @property
    def ttl(self) -> float | None: ...


_O = TypeVar("_O", bound=Outgoing)


def encode_messages(
    items: Iterable[_O],
    out: list[bytes],
    ends: deque[tuple[int, _O]],
    offset: int,
    size: int,
    limit: int,
) -> tuple[int, int]:
    """Encode queued messages as MESSAGE packets onto ``out`` while fewer than
    ``limit`` bytes are in it.

    ``size`` is the byte count already in ``out``; ``offset`` the stream
    position where ``out`` starts.  For each message, ``(stream position of
    its last byte + 1, item)`` is appended to ``ends``.  Its TTL goes out as
    whole seconds, what remains of it (``None``: infinite).  Returns (messages
    encoded, new ``size``).
    """
    pack = _PACKET_HEAD.pack
    extra = _PACKET_HEAD_SIZE - 4  # the packet header is not in the length
    head_size = _PACKET_HEAD_SIZE
    count = 0
    for item in items:
        if size >= limit:
            break
        msg = item.message
        data = msg.data
        ttl = item.ttl
        if ttl is None:
            wire_ttl = INFINITE_TTL
        else:
            wire_ttl = int(ttl)
            if wire_ttl > MAX_TTL:  # a finite TTL never reads as infinite
                wire_ttl = MAX_TTL
        length = len(data)
        out.append(pack(length + extra, FRAME_MESSAGE, msg.uuid, wire_ttl, msg.flags))
        out.append(data)
        size += length + head_size
        ends.append((offset + size, item))
        count += 1
    return count, size


# a received message's fields are valid by construction: stored straight
# through the frozen class's slots (Message._trusted, inline: per message)
_new_message = object.__new__
_set_data = Message.__dict__["data"].__set__
_set_ttl = Message.__dict__["ttl"].__set__
_set_flags = Message.__dict__["flags"].__set__
_set_uuid = Message.__dict__["uuid"].__set__


def decode_messages(packets: Sequence[memoryview], i: int) -> list[Message]:
    """Decode the run of MESSAGE packets that starts at ``packets[i]``.

    The run ends before the first packet that is not a complete MESSAGE
    frame; the caller looks at that one itself.  Payloads are copied (a
    ``bytes`` each), so the packets may be views of a reused buffer.

    Raises:
        MalformedFrameError: ``packets[i]`` itself is a MESSAGE too short for
            its head (a short one later in the run only ends the run, so that
            the messages before it are returned first).
    """
    unpack = _MESSAGE_HEAD.unpack_from
    head = MESSAGE_HEAD_SIZE
    infinite = INFINITE_TTL
    messages: list[Message] = []
    append = messages.append
    start = i
    count = len(packets)
    while i < count:
        packet = packets[i]
        if not packet or packet[0] != FRAME_MESSAGE:
            break
        if len(packet) < head:
            if i == start:
                raise short_message_error(len(packet))
            break
        _, uuid, ttl, flags = unpack(packet)
        message = _new_message(Message)
        _set_data(message, packet[head:].tobytes())
        _set_ttl(message, None if ttl == infinite else float(ttl))
        _set_flags(message, flags)
        _set_uuid(message, uuid)
        append(message)
        i += 1
    return messages


def decode_ident(raw: bytes | memoryview) -> str:
    """Decode and validate an identifier received from a peer."""
    if len(raw) == 0:
        raise MalformedFrameError("IDENTIFICATION frame carries an empty identifier")
    if len(raw) > MAX_IDENT_LENGTH * 4:
        raise MalformedFrameError(f"IDENTIFICATION frame of {len(raw)} bytes is too long")
    try:
        ident = _bytes_of(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrameError(f"identifier is not valid UTF-8: {exc}") from None
    if len(ident) > MAX_IDENT_LENGTH:
        raise MalformedFrameError(
            f"identifier of {len(ident)} characters exceeds the limit of {MAX_IDENT_LENGTH}"
        )
    if not ident.isprintable() and unprintable_in(ident):
        raise MalformedFrameError(
            f"identifier {ident!r} contains control or format characters (refused: "
            "they could forge log lines or hide the real name)"
        )
    return ident


def _expect_empty(packet: bytes | memoryview, name: str) -> None:
    if len(packet) != 1:
        raise MalformedFrameError(
            f"{name} frame must have an empty body, got {len(packet) - 1} bytes"
        )


class PacketDecoder:
    """Split a byte stream into packets, any chunking accepted.

    Args:
        max_packet_size: the largest payload accepted; a header announcing more
            raises ``PacketTooLargeError`` before the body is buffered.

    The bytes of an incomplete packet are kept as a list of chunks and joined
    once, when the packet is complete, so a large packet arriving in many
    small reads costs one copy, not one copy per read.  Packets complete
    within one ``feed()`` are views of the data fed, not copies: an I/O layer
    may feed a view of a read buffer it reuses, provided it is done with the
    packets before the next read (the decoder copies whatever it keeps).  Packets that complete
    before an oversized header in the same chunk are still returned; the
    error is raised by the next ``feed()`` (the I/O layer's next read, or the
    engine's ``feed(b"")`` right after), with only the 4-byte header kept.
    """

    __slots__ = ("_chunks", "_max", "_need", "_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        if isinstance(max_packet_size, bool) or not isinstance(max_packet_size, int):
            raise TypeError("max_packet_size must be an int")
        if max_packet_size < 1:
            raise ValueError(f"max_packet_size must be >= 1, got {max_packet_size}")
        self._max = max_packet_size
        self._chunks: list[bytes] = []  # an incomplete packet, as received
        self._size = 0  # total length of _chunks
        self._need = 4  # _size at which the next packet (or its header) is complete

    @property
    def max_packet_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a packet."""
        return self._size

    @property
    def pending_error(self) -> bool:
        """True when the buffered bytes start with an oversized header; the
        next ``feed()`` raises ``PacketTooLargeError``."""
        return self._need == 4 and self._size >= 4

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add received bytes; return every packet payload now complete.

        The packets may be views of ``data``: when ``data`` is a buffer the
        caller reuses, use them before changing it.  Nothing of ``data`` is
        referenced by the decoder after the call.

        Raises:
            PacketTooLargeError: a header announces more than the maximum.
        """
        chunks = self._chunks
        buf: bytes | bytearray | memoryview
        if chunks:
            size = self._size + len(data)
            if size < self._need:
                if data:
                    chunks.append(bytes(data))  # kept: a copy
                    self._size = size
                return []
            # complete: one join copies the kept chunks and the new data
            buf = chunks[0] if not data and len(chunks) == 1 else b"".join([*chunks, data])
            chunks.clear()
        else:
            buf = data  # not copied: only the incomplete tail is kept (below)
        end = len(buf)
        pos = 0
        view = memoryview(buf)
        packets: list[memoryview] = []
        append = packets.append
        unpack = HEADER.unpack_from
        maximum = self._max
        need = 4
        while end - pos >= 4:
            (size,) = unpack(buf, pos)
            if size > maximum:
                if packets:
                    # report it on the next feed(); keep the header only
                    chunks.append(bytes(buf[pos : pos + 4]))
                    self._size = 4
                    self._need = 4  # complete: the next feed() parses it again and raises
                    return packets
                self._size = 0
                self._need = 4
                raise PacketTooLargeError(
                    f"peer announced a packet of {size} bytes; the maximum is {maximum} "
                    f"({_too_large_hint(size)})"
                )
            stop = pos + 4 + size
            if stop > end:
                need = 4 + size
                break
            append(view[pos + 4 : stop])
            pos = stop
        if pos < end:
            # kept: a copy, unless it is a whole bytes object (immutable)
            chunks.append(buf if not pos and type(buf) is bytes else bytes(buf[pos:]))
            self._size = end - pos
        else:
            self._size = 0
        self._need = need
        return packets


def _too_large_hint(header: int) -> str:
    """What a too-large length header most likely is, and the fix: other
    protocols' first bytes read as huge lengths."""
    first, second = header >> 24, (header >> 16) & 0xFF
    if first in (0x15, 0x16) and second == 0x03:
        return (
            "these bytes are a TLS record: the other side speaks TLS, so give this side "
            "an ssl_config too"
        )
    head = header.to_bytes(4, "big")
    if head in (b"GET ", b"POST", b"HEAD", b"PUT ", b"HTTP"):
        return f"these bytes are HTTP ({head.decode()!r}...): the other side is no snakemq peer"
    return "raise max_packet_size if this peer is trusted"
