"""Errors: the ``snakemq_proto`` hierarchy plus the snakeMQ 1.6 names.

The 1.6 names are aliases of the closest new class where one exists, so
``except SnakeMQException`` in an old program still catches what it should.
"""

from __future__ import annotations

from snakemq_proto import (
    DuplicateIdentError,
    HandshakeTimeoutError,
    IdentityMismatchError,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
    LeaseLostError,
    LocalProtocolError,
    MalformedFrameError,
    PacketTooLargeError,
    RemoteProtocolError,
    SlowReaderError,
    SnakeMQError,
    StorageError,
    UnexpectedFrameError,
)


class NoConnection(SnakeMQError):
    """The connection id names no open connection."""


class SendNotFinished(SnakeMQError):
    """``Link.send()`` was called before ``on_ready_to_send`` reported the last send."""


class SnakeMQUnknownRoute(SnakeMQError):
    """Message destination unknown (kept for 1.6 compatibility; not raised)."""


SnakeMQException = SnakeMQError
SnakeMQBrokenFormat = RemoteProtocolError
SnakeMQBrokenPacket = PacketTooLargeError
SnakeMQBrokenMessage = MalformedFrameError
SnakeMQIncompatibleProtocol = IncompatibleProtocolError
SnakeMQNoIdent = UnexpectedFrameError

__all__ = [
    "DuplicateIdentError",
    "HandshakeTimeoutError",
    "IdentityMismatchError",
    "IncompatibleProtocolError",
    "KeepaliveTimeoutError",
    "LeaseLostError",
    "LocalProtocolError",
    "MalformedFrameError",
    "NoConnection",
    "PacketTooLargeError",
    "RemoteProtocolError",
    "SendNotFinished",
    "SlowReaderError",
    "SnakeMQBrokenFormat",
    "SnakeMQBrokenMessage",
    "SnakeMQBrokenPacket",
    "SnakeMQError",
    "SnakeMQException",
    "SnakeMQIncompatibleProtocol",
    "SnakeMQNoIdent",
    "SnakeMQUnknownRoute",
    "StorageError",
    "UnexpectedFrameError",
]
