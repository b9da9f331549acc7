"""Test helpers: a raw peer's side of the protocol."""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream
from snakemq_proto import Identification, ProtocolVersion, encode_packet


def hello(ident: str) -> bytes:
    """A snakeMQ 1.6 handshake (no capabilities)."""
    return encode_packet(ProtocolVersion().encode()) + encode_packet(Identification(ident).encode())


async def read_until_closed(stream: ByteStream) -> bytes:
    """Everything the remote side writes until it closes the connection."""
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return bytes(received)
