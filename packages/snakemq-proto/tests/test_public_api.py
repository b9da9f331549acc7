"""The public surface of snakemq_proto, pinned: the sync and anyio packages are
written against it, so a change here must be deliberate."""

from __future__ import annotations

import inspect

import snakemq_proto

PUBLIC = [
    "PersistentWithoutStorage",
    "bind_error",
    "CAP_ACK",
    "DEFAULT_DEDUP_LINGER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_KEEPALIVE_WAIT",
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MAX_UNIDENTIFIED",
    "DEFAULT_WINDOW",
    "DEFAULT_WRITE_STALL_TIMEOUT",
    "FLAG_PERSISTENT",
    "INFINITE_TTL",
    "MAX_IDENT_LENGTH",
    "MAX_TTL",
    "MAX_UUID_LENGTH",
    "OUTPUT_HIGH_WATER",
    "PROTOCOL_VERSION",
    "UUID_LENGTH",
    "Ack",
    "Capabilities",
    "CloseConnection",
    "ConnState",
    "DuplicateIdentError",
    "Engine",
    "ErrorOccurred",
    "Event",
    "Frame",
    "HandshakeTimeoutError",
    "SlowReaderError",
    "Identification",
    "IdentityMismatchError",
    "IncompatibleProtocol",
    "IncompatibleProtocolError",
    "KeepaliveTimeoutError",
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
    "Ping",
    "Pong",
    "ProtocolVersion",
    "QueuesStorage",
    "RedialHeld",
    "RemoteProtocolError",
    "SSLConfig",
    "SnakeMQError",
    "SqlAlchemyQueuesStorage",
    "SqliteQueuesStorage",
    "Lease",
    "LegacyQueuesStorage",
    "LegacyStorageAdapter",
    "open_storage",
    "standby",
    "storage_at",
    "StorageBatch",
    "LeaseLostError",
    "LeaseWatch",
    "RenewableLease",
    "lease_watch",
    "take_over_attempt",
    "StorageError",
    "StoredState",
    "FillRequest",
    "QUEUE_WINDOW",
    "WindowedStorage",
    "load_state",
    "UnexpectedFrameError",
    "cert_idents",
    "check_ident",
    "check_ttl",
    "decode_frame",
    "encode_packet",
    "new_uuid",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_MAX_INTERVAL",
    "JITTER",
    "Backoff",
    "RedialHolds",
    "StorageWriter",
    "check_address",
    "check_seconds",
]

ENGINE_METHODS = [
    "close",
    "conn_ident",
    "connected_idents",
    "connection_lost",
    "connection_made",
    "data_sent",
    "data_to_send",
    "fill_failed",
    "fill_requests",
    "filled",
    "handed",
    "handle_timeout",
    "load",
    "next_deadline",
    "purge",
    "queue_full",
    "queue_has_room",
    "queue_idents",
    "queued",
    "read_moved_deadline",
    "receive_data",
    "restore",
    "send_message",
    "take_storage_batch",
    "wants_write",
    "writing",
]


def test_all_is_pinned() -> None:
    assert sorted(snakemq_proto.__all__) == sorted(PUBLIC)
    assert len(set(snakemq_proto.__all__)) == len(snakemq_proto.__all__)


def test_every_public_name_exists() -> None:
    for name in snakemq_proto.__all__:
        assert hasattr(snakemq_proto, name), name


def test_no_other_public_names_leak() -> None:
    public = {
        n
        for n, v in vars(snakemq_proto).items()
        if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
    }
    assert public <= set(snakemq_proto.__all__), public - set(snakemq_proto.__all__)


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in snakemq_proto.__all__:
        obj = getattr(snakemq_proto, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_engine_methods_are_pinned_and_documented() -> None:
    methods = sorted(
        n for n, v in vars(snakemq_proto.Engine).items() if not n.startswith("_") and callable(v)
    )
    assert methods == ENGINE_METHODS
    for name in methods:
        assert getattr(snakemq_proto.Engine, name).__doc__, name


def test_engine_signatures_take_now_where_time_matters() -> None:
    for name in (
        "receive_data",
        "connection_lost",
        "handle_timeout",
        "send_message",
        "load",
        "writing",
        "restore",
        "filled",
    ):
        params = inspect.signature(getattr(snakemq_proto.Engine, name)).parameters
        assert "now" in params, name
    assert "now" in inspect.signature(snakemq_proto.Engine.connection_made).parameters


def test_events_are_frozen_values() -> None:
    import attrs

    for name in (
        "PeerConnected",
        "PeerDisconnected",
        "MessageReceived",
        "MessageSent",
        "MessageDelivered",
        "MessageDropped",
        "ErrorOccurred",
        "CloseConnection",
        "RedialHeld",
        "Message",
        "Ack",
        "Capabilities",
        "Identification",
        "MessageFrame",
        "ProtocolVersion",
    ):
        cls = getattr(snakemq_proto, name)
        assert attrs.has(cls), name
        assert cls.__setattr__ is not object.__setattr__, name  # frozen


def test_errors_hierarchy() -> None:
    remote = [
        "PacketTooLargeError",
        "MalformedFrameError",
        "UnexpectedFrameError",
        "IncompatibleProtocolError",
        "DuplicateIdentError",
        "IdentityMismatchError",
        "KeepaliveTimeoutError",
        "HandshakeTimeoutError",
        "SlowReaderError",
    ]
    for name in remote:
        assert issubclass(getattr(snakemq_proto, name), snakemq_proto.RemoteProtocolError)
    for name in ("RemoteProtocolError", "LocalProtocolError", "StorageError"):
        assert issubclass(getattr(snakemq_proto, name), snakemq_proto.SnakeMQError)
    assert issubclass(snakemq_proto.SnakeMQError, Exception)


def test_memory_storage_implements_the_protocol() -> None:
    assert isinstance(snakemq_proto.MemoryQueuesStorage(), snakemq_proto.QueuesStorage)
