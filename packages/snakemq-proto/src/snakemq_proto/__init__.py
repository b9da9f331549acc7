"""snakemq_proto: the sans-IO specification of the snakemq protocol.

Wire frames, ``Message``, TTL and queue semantics, acknowledgements,
de-duplication, keepalive and the storage interface — everything except
sockets, threads and clocks.  The sync package ``snakemq`` and the async
package ``snakemq_anyio`` are I/O shells around ``Engine``.
"""

import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("snakemq-proto")
    """The installed version of the ``snakemq-proto`` distribution (the repository's VERSION file)."""
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

from ._backoff import JITTER, Backoff
from ._checks import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_WAIT,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_MAX_INTERVAL,
    check_address,
    check_seconds,
)
from ._diagnostics import PersistentWithoutStorage, bind_error
from ._engine import (
    DEFAULT_DEDUP_LINGER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_WINDOW,
    OUTPUT_HIGH_WATER,
    ConnState,
    Engine,
)
from ._errors import (
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
from ._events import (
    CloseConnection,
    ErrorOccurred,
    Event,
    MessageDelivered,
    MessageDropped,
    MessageReceived,
    MessageSent,
    PeerConnected,
    PeerDisconnected,
    RedialHeld,
)
from ._lease import LeaseWatch, RenewableLease, lease_watch, take_over_attempt
from ._message import (
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
from ._redial import RedialHolds
from ._sqla import SqlAlchemyQueuesStorage, storage_at
from ._sqlite import SqliteQueuesStorage
from ._stall import DEFAULT_WRITE_STALL_TIMEOUT
from ._storage import (
    QUEUE_WINDOW,
    FillRequest,
    Lease,
    LegacyQueuesStorage,
    LegacyStorageAdapter,
    MemoryQueuesStorage,
    QueuesStorage,
    StorageBatch,
    StoredState,
    WindowedStorage,
    load_state,
    open_storage,
    standby,
)
from ._tls import SSLConfig, cert_idents
from ._unidentified import DEFAULT_MAX_UNIDENTIFIED
from ._wire import (
    CAP_ACK,
    DEFAULT_MAX_PACKET_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Capabilities,
    Frame,
    Identification,
    IncompatibleProtocol,
    MessageFrame,
    PacketDecoder,
    Ping,
    Pong,
    ProtocolVersion,
    decode_frame,
    encode_packet,
)
from ._writer import StorageWriter

__all__ = [
    "CAP_ACK",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DEDUP_LINGER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_KEEPALIVE_WAIT",
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MAX_UNIDENTIFIED",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_MAX_INTERVAL",
    "DEFAULT_WINDOW",
    "DEFAULT_WRITE_STALL_TIMEOUT",
    "FLAG_PERSISTENT",
    "INFINITE_TTL",
    "JITTER",
    "MAX_IDENT_LENGTH",
    "MAX_TTL",
    "MAX_UUID_LENGTH",
    "OUTPUT_HIGH_WATER",
    "PROTOCOL_VERSION",
    "QUEUE_WINDOW",
    "UUID_LENGTH",
    "Ack",
    "Backoff",
    "Capabilities",
    "CloseConnection",
    "ConnState",
    "DuplicateIdentError",
    "Engine",
    "ErrorOccurred",
    "Event",
    "FillRequest",
    "Frame",
    "HandshakeTimeoutError",
    "Identification",
    "IdentityMismatchError",
    "IncompatibleProtocol",
    "IncompatibleProtocolError",
    "KeepaliveTimeoutError",
    "Lease",
    "LeaseLostError",
    "LeaseWatch",
    "LegacyQueuesStorage",
    "LegacyStorageAdapter",
    "LocalProtocolError",
    "MalformedFrameError",
    "MemoryQueuesStorage",
    "Message",
    "MessageDelivered",
    "MessageDropped",
    "MessageFrame",
    "MessageReceived",
    "MessageSent",
    "PacketDecoder",
    "PacketTooLargeError",
    "PeerConnected",
    "PeerDisconnected",
    "PersistentWithoutStorage",
    "Ping",
    "Pong",
    "ProtocolVersion",
    "QueuesStorage",
    "RedialHeld",
    "RedialHolds",
    "RemoteProtocolError",
    "RenewableLease",
    "SSLConfig",
    "SlowReaderError",
    "SnakeMQError",
    "SqlAlchemyQueuesStorage",
    "SqliteQueuesStorage",
    "StorageBatch",
    "StorageError",
    "StorageWriter",
    "StoredState",
    "UnexpectedFrameError",
    "WindowedStorage",
    "bind_error",
    "cert_idents",
    "check_address",
    "check_ident",
    "check_seconds",
    "check_ttl",
    "decode_frame",
    "encode_packet",
    "lease_watch",
    "load_state",
    "new_uuid",
    "open_storage",
    "standby",
    "storage_at",
    "take_over_attempt",
]
