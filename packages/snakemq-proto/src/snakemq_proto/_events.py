"""Events the engine reports to the I/O layer.

Each is a small frozen value.  ``CloseConnection`` is an instruction rather
than news: the I/O layer writes what ``data_to_send()`` still returns for that
connection (best effort), closes the socket and calls ``connection_lost()``.
``RedialHeld`` is one too: the connector that dialled a redundant connection
waits until the peer's other connection ends.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from ._errors import SnakeMQError
from ._message import Message


@attrs.frozen
class PeerConnected:
    """A connection finished the handshake; the remote peer is ``ident``.

    ``legacy`` is true for a peer without capabilities (snakeMQ 1.6): it gets
    no acknowledgements and messages to it leave the queue once written.
    """

    conn_id: str
    ident: str
    legacy: bool


@attrs.frozen
class PeerDisconnected:
    """An identified connection is gone; its peer's messages wait again."""

    conn_id: str
    ident: str


@attrs.frozen
class MessageReceived:
    """A message arrived; hand it to the application, then call ``handed()``."""

    conn_id: str
    ident: str
    message: Message


@attrs.frozen
class MessageSent:
    """The message's packet was completely written to the connection.

    ``settled`` is true when this write is the message's last step: the peer
    is a snakeMQ 1.6 one (``PeerConnected.legacy``), which acknowledges
    nothing, so the message left its queue and storage with this write and no
    ``MessageDelivered`` follows.  A message is settled — done with, its
    receipt resolved — by a ``MessageDelivered`` or by a ``MessageSent`` with
    ``settled``.  The flag follows from the connection, so it takes no part
    in equality.
    """

    conn_id: str
    ident: str
    uuid: bytes
    settled: bool = attrs.field(default=False, eq=False)


@attrs.frozen
class MessageDelivered:
    """The remote peer acknowledged the message; it left the queue and storage."""

    ident: str
    uuid: bytes


@attrs.frozen
class MessageDropped:
    """The message's TTL ran out (or was 0 with the peer away); it is gone."""

    ident: str
    uuid: bytes


@attrs.frozen
class ErrorOccurred:
    """Something on a connection went wrong; the connection will be closed."""

    conn_id: str
    ident: str | None
    error: SnakeMQError


@attrs.frozen
class CloseConnection:
    """Instruction: flush ``data_to_send()``, close, then ``connection_lost()``."""

    conn_id: str


@attrs.frozen
class RedialHeld:
    """Instruction: ``conn_id`` was dialled by this peer (``outbound=True``)
    and is closed as redundant, because ``ident`` is connected over another
    connection (a duplicate, or the loser of two crossed dials).  Do not
    redial the address it was dialled to until ``PeerDisconnected`` for
    ``ident``; then redial at once.  Comes before that connection's
    ``CloseConnection``."""

    conn_id: str
    ident: str


Event: TypeAlias = (
    PeerConnected
    | PeerDisconnected
    | MessageReceived
    | MessageSent
    | MessageDelivered
    | MessageDropped
    | ErrorOccurred
    | CloseConnection
    | RedialHeld
)


# Constructors for the per-message events, used on the engine's hot paths:
# the fields are already valid, so they are stored straight through the slot
# descriptors instead of the frozen class's __init__.
_new = object.__new__
_rx_conn = MessageReceived.__dict__["conn_id"].__set__
_rx_ident = MessageReceived.__dict__["ident"].__set__
_rx_message = MessageReceived.__dict__["message"].__set__
_sent_conn = MessageSent.__dict__["conn_id"].__set__
_sent_ident = MessageSent.__dict__["ident"].__set__
_sent_uuid = MessageSent.__dict__["uuid"].__set__
_sent_settled = MessageSent.__dict__["settled"].__set__
_dl_ident = MessageDelivered.__dict__["ident"].__set__
_dl_uuid = MessageDelivered.__dict__["uuid"].__set__


def _received(conn_id: str, ident: str, message: Message) -> MessageReceived:
    event: MessageReceived = _new(MessageReceived)
    _rx_conn(event, conn_id)
    _rx_ident(event, ident)
    _rx_message(event, message)
    return event


def _sent(conn_id: str, ident: str, uuid: bytes, settled: bool) -> MessageSent:
    event: MessageSent = _new(MessageSent)
    _sent_conn(event, conn_id)
    _sent_ident(event, ident)
    _sent_uuid(event, uuid)
    _sent_settled(event, settled)
    return event


def _delivered(ident: str, uuid: bytes) -> MessageDelivered:
    event: MessageDelivered = _new(MessageDelivered)
    _dl_ident(event, ident)
    _dl_uuid(event, uuid)
    return event
