"""The error hierarchy.

``SnakeMQError`` is the root.  ``RemoteProtocolError`` and its subclasses mean
that a *remote peer* sent something we refuse; the engine reports them in an
``ErrorOccurred`` event and closes that one connection.  ``LocalProtocolError``
means the program misused the engine (a bug in the caller, not the network).
``StorageError`` covers a storage file we cannot use.
"""

from __future__ import annotations


class SnakeMQError(Exception):
    """Base class of every error snakemq raises on purpose."""


class RemoteProtocolError(SnakeMQError):
    """A remote peer broke the protocol; its connection is closed."""


class PacketTooLargeError(RemoteProtocolError):
    """A packet header announced more bytes than the configured maximum."""


class MalformedFrameError(RemoteProtocolError):
    """A frame is empty, truncated, too long or has an invalid field."""


class UnexpectedFrameError(RemoteProtocolError):
    """A valid frame arrived in a connection state that does not allow it."""


class IncompatibleProtocolError(RemoteProtocolError):
    """The remote peer speaks another protocol version (or refused ours)."""


class DuplicateIdentError(RemoteProtocolError):
    """A peer identified itself with an identifier that is already connected.

    ``crossed`` is true when the two peers only dialled each other and this
    connection is the redundant one of the pair: routine, logged at INFO.
    Otherwise (two connections that both claim one identifier) it is logged
    as a warning."""

    crossed: bool = False


class IdentityMismatchError(RemoteProtocolError):
    """The identifier a peer claimed is not named by its TLS certificate."""


class KeepaliveTimeoutError(RemoteProtocolError):
    """The remote peer did not answer a keepalive ping in time."""


class SlowReaderError(RemoteProtocolError):
    """The remote peer makes us answer (PING) but does not read the answers."""


class HandshakeTimeoutError(RemoteProtocolError):
    """The remote peer did not identify itself in time after connecting."""


class LocalProtocolError(SnakeMQError):
    """The engine was used in a way its API does not allow."""


class StorageError(SnakeMQError):
    """A queue storage cannot be opened or used (corrupt, locked, foreign)."""


class LeaseLostError(StorageError):
    """Another process serves this identifier now (it took the storage's
    lease while this one could not renew it): this process must stop serving
    it.  To become a standby again, open the storage anew."""
