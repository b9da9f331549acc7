"""snakemq_anyio: brokerless, symmetric, reliable messaging for async Python.

An anyio (asyncio and trio) shell around ``snakemq_proto.Engine``: the same
peers, wire protocol, delivery and TTL semantics as the sync ``snakemq``
package.  Start with ``Messaging``.
"""

import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("snakemq-anyio")
    """The installed version of the ``snakemq-anyio`` distribution (the repository's VERSION file)."""
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

from snakemq_proto import (
    FLAG_PERSISTENT,
    DuplicateIdentError,
    ErrorOccurred,
    HandshakeTimeoutError,
    IdentityMismatchError,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
    LeaseLostError,
    MalformedFrameError,
    MemoryQueuesStorage,
    Message,
    MessageDelivered,
    MessageDropped,
    MessageSent,
    PacketTooLargeError,
    PeerConnected,
    PeerDisconnected,
    QueuesStorage,
    RemoteProtocolError,
    SlowReaderError,
    SnakeMQError,
    SqlAlchemyQueuesStorage,
    SqliteQueuesStorage,
    SSLConfig,
    StorageError,
    UnexpectedFrameError,
)

from ._messaging import Messaging, TLSHandshakeError
from ._receipt import DeliveryError, MessageDroppedError, MessagingClosedError, Receipt
from ._stream import EventStream, MessagingEvent, ReadingPaused, ReadingResumed

__all__ = [
    "FLAG_PERSISTENT",
    "DeliveryError",
    "DuplicateIdentError",
    "ErrorOccurred",
    "EventStream",
    "HandshakeTimeoutError",
    "IdentityMismatchError",
    "IncompatibleProtocolError",
    "KeepaliveTimeoutError",
    "LeaseLostError",
    "MalformedFrameError",
    "MemoryQueuesStorage",
    "Message",
    "MessageDelivered",
    "MessageDropped",
    "MessageDroppedError",
    "MessageSent",
    "Messaging",
    "MessagingClosedError",
    "MessagingEvent",
    "PacketTooLargeError",
    "PeerConnected",
    "PeerDisconnected",
    "QueuesStorage",
    "ReadingPaused",
    "ReadingResumed",
    "Receipt",
    "RemoteProtocolError",
    "SSLConfig",
    "SlowReaderError",
    "SnakeMQError",
    "SqlAlchemyQueuesStorage",
    "SqliteQueuesStorage",
    "StorageError",
    "TLSHandshakeError",
    "UnexpectedFrameError",
]
