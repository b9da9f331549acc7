"""``Message``: the unit the application sends and receives."""

from __future__ import annotations

import math
import os
import random
import unicodedata
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


# uuids only have to be unique, not secret (de-duplication is per remote peer,
# so a peer can only ever shadow its own messages): a generator seeded from the
# OS once per process (and again in a forked child) costs no syscall per message.
# uuids are made _UUID_BATCH at a time (one big random number, masked into
# the version 4 layout at once, cut into 16-byte pieces) and handed out with
# list.pop(), which is atomic under the GIL: a message costs no random call.
_rng = random.Random(os.urandom(32))
_UUID_BATCH = 256
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_SET = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
_BATCH_CLEAR = sum(_UUID_CLEAR << (128 * i) for i in range(_UUID_BATCH))
_BATCH_SET = sum(_UUID_SET << (128 * i) for i in range(_UUID_BATCH))
_uuids: list[bytes] = []
_uuids_pop = _uuids.pop


def _reseed() -> None:
    _rng.seed(os.urandom(32))
    _uuids.clear()  # the parent's unused ones must not be used twice


os.register_at_fork(after_in_child=_reseed)


def new_uuid() -> bytes:
    """Return 16 random bytes in the layout of a version 4 UUID."""
    try:
        return _uuids_pop()
    except IndexError:
        raw = ((_rng.getrandbits(128 * _UUID_BATCH) & _BATCH_CLEAR) | _BATCH_SET).to_bytes(
            16 * _UUID_BATCH, "big"
        )
        _uuids.extend([raw[i : i + 16] for i in range(0, 16 * _UUID_BATCH, 16)])
        return _uuids_pop()


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
    if not ident.isprintable() and unprintable_in(ident):
        raise ValueError(
            f"{name}={ident!r} contains control or format characters; peers refuse such identifiers"
        )
    return ident


_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def unprintable_in(ident: str) -> bool:
    """Whether ``ident`` holds a control, format or line/paragraph separator
    character (newlines, ESC, bidi overrides ...), which no identifier may."""
    return any(unicodedata.category(c) in _UNPRINTABLE_CATEGORIES for c in ident)


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


@attrs.frozen(repr=False, init=False)
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

    data: bytes
    ttl: float | None
    flags: int
    uuid: bytes

    def __init__(
        self,
        data: bytes,
        ttl: float | None = 0,
        flags: int = 0,
        uuid: bytes | None = None,
    ) -> None:
        # Hand-written rather than attrs validators: this runs once per message
        # sent, so the common case takes a few type checks and slot stores.
        if type(data) is not bytes:
            _check_data(self, None, data)
        kind = type(ttl)
        if (kind is float or kind is int) and 0 <= ttl <= MAX_TTL:  # type: ignore[operator]
            ttl = float(ttl)  # type: ignore[arg-type]
        elif ttl is not None:
            ttl = check_ttl(ttl)  # raises with the reason
        if type(flags) is not int or not 0 <= flags <= MAX_FLAGS:
            _check_flags(self, None, flags)
        if uuid is None:
            try:  # new_uuid(), inline
                uuid = _uuids_pop()
            except IndexError:
                uuid = new_uuid()
        elif type(uuid) is not bytes or len(uuid) != UUID_LENGTH:
            uuid = _convert_uuid(uuid)
        _set_data(self, data)
        _set_ttl(self, ttl)
        _set_flags(self, flags)
        _set_uuid(self, uuid)

    @classmethod
    def _trusted(cls, data: bytes, ttl: float | None, flags: int, uuid: bytes) -> Message:
        """Build a message from fields that are already valid (hot path)."""
        self = _new(cls)
        _set_data(self, data)
        _set_ttl(self, ttl)
        _set_flags(self, flags)
        _set_uuid(self, uuid)
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


# The slot descriptors of the frozen class: storing through them skips the
# frozen __setattr__ (which exists to stop users, not the constructor).
_new = object.__new__
_set_data = Message.__dict__["data"].__set__
_set_ttl = Message.__dict__["ttl"].__set__
_set_flags = Message.__dict__["flags"].__set__
_set_uuid = Message.__dict__["uuid"].__set__
