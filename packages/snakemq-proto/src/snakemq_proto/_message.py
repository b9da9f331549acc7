"""``Message``: the unit the application sends and receives."""

from __future__ import annotations

import math
import os
from typing import Any

import attrs

FLAG_PERSISTENT = 0x1
"""Store the message in the sender's queue storage until it is delivered."""

MAX_IDENT_LENGTH = 50
"""Identifiers are at most this many characters (snakeMQ 1.6 limit)."""

UUID_LENGTH = 16
MAX_UUID_LENGTH = UUID_LENGTH  # snakeMQ 1.6 name

INFINITE_TTL = 0xFFFFFFFF
"""The wire value of ``ttl=None``."""

MAX_TTL = INFINITE_TTL - 1
"""The largest finite TTL in seconds the wire can carry."""

MAX_FLAGS = 0xFFFFFFFF


def new_uuid() -> bytes:
    """Return 16 random bytes in the layout of a version 4 UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def check_ttl(ttl: object, name: str = "ttl") -> float | None:
    """Validate a TTL given by the program and return it as ``float | None``.

    Raises:
        TypeError: ``ttl`` is not a real number or ``None``.
        ValueError: negative, NaN, or too large for the wire (>= 2**32 - 1 s).
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(ttl).__name__}")
    value = float(ttl)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds (or None for infinite), got {ttl!r}")
    if value > MAX_TTL:
        raise ValueError(
            f"{name}={ttl!r} does not fit the wire; use at most {MAX_TTL} s or None for infinite"
        )
    return value


def check_ident(ident: object, name: str = "ident") -> str:
    """Validate a peer identifier given by the program.

    Raises:
        TypeError: not a ``str``.
        ValueError: empty or longer than ``MAX_IDENT_LENGTH`` characters.
    """
    if not isinstance(ident, str):
        raise TypeError(f"{name} must be a str, not {type(ident).__name__}")
    if not ident:
        raise ValueError(f"{name} must not be empty")
    if len(ident) > MAX_IDENT_LENGTH:
        raise ValueError(
            f"{name} is {len(ident)} characters long; the protocol allows at most "
            f"{MAX_IDENT_LENGTH}"
        )
    return ident


def _check_data(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"data must be bytes, not {type(value).__name__}")


def _check_flags(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"flags must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_FLAGS:
        raise ValueError(f"flags must fit in 32 bits unsigned, got {value!r}")


def _convert_uuid(value: bytes | None) -> bytes:
    if value is None:
        return new_uuid()
    if not isinstance(value, bytes):
        raise TypeError(f"uuid must be 16 bytes or None, not {type(value).__name__}")
    if len(value) != UUID_LENGTH:
        raise ValueError(f"uuid must be exactly {UUID_LENGTH} bytes, got {len(value)}")
    return value


@attrs.frozen(repr=False)
class Message:
    """A message: payload, time to live, flags and a 16-byte unique id.

    Args:
        data: the payload.
        ttl: seconds the message may wait for a disconnected peer; ``None`` is
            infinite, ``0`` delivers only to a peer connected right now.
        flags: a combination of ``FLAG_*`` values.
        uuid: 16 bytes; a random (version 4) one is made when omitted.

    Raises:
        TypeError, ValueError: an argument has a wrong type or value; the
            message names the argument.
    """

    data: bytes = attrs.field(validator=_check_data)
    ttl: float | None = attrs.field(default=0, converter=check_ttl)
    flags: int = attrs.field(default=0, validator=_check_flags)
    uuid: bytes = attrs.field(default=None, converter=_convert_uuid)

    @classmethod
    def _trusted(cls, data: bytes, ttl: float | None, flags: int, uuid: bytes) -> Message:
        """Build a message from fields that are already valid (hot path)."""
        self = object.__new__(cls)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "uuid", uuid)
        return self

    def with_ttl(self, ttl: float | None) -> Message:
        """Return a copy with another TTL (the uuid stays the same)."""
        return Message._trusted(self.data, check_ttl(ttl), self.flags, self.uuid)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & FLAG_PERSISTENT)

    def __repr__(self) -> str:
        return (
            f"<Message uuid={self.uuid.hex()} ttl={self.ttl!r} flags={self.flags:#x} "
            f"len={len(self.data)}>"
        )
