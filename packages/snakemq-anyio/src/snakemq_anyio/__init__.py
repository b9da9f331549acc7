"""snakemq_anyio: brokerless, symmetric, reliable messaging for async Python.

An anyio (asyncio and trio) shell around ``snakemq_proto.Engine``: the same
peers, wire protocol, delivery and TTL semantics as the sync ``snakemq``
package.  Start with ``Messaging``.
"""

from snakemq_proto import (
    FLAG_PERSISTENT,
    DuplicateIdentError,
    ErrorOccurred,
    HandshakeTimeoutError,
    IdentityMismatchError,
    IncompatibleProtocolError,
    KeepaliveTimeoutError,
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
    "SqliteQueuesStorage",
    "StorageError",
    "TLSHandshakeError",
    "UnexpectedFrameError",
]
