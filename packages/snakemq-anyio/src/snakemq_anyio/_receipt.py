"""``Receipt``: what ``send_message`` returns, and the delivery errors."""

from __future__ import annotations

import anyio
from snakemq_proto import SnakeMQError


class DeliveryError(SnakeMQError):
    """A message was not delivered (see the subclasses)."""

    def __init__(self, message: str, ident: str, uuid: bytes) -> None:
        super().__init__(message)
        self.ident = ident
        self.uuid = uuid


class MessageDroppedError(DeliveryError):
    """The message's TTL ran out before the peer acknowledged it; it is gone."""


class MessagingClosedError(DeliveryError):
    """The ``Messaging`` closed before the message was delivered.  A persistent
    message sent with a storage is still queued on disk and is delivered after
    a restart."""


_PENDING = 0
_DELIVERED = 1
_FAILED = 2


class Receipt:
    """The fate of one sent message.

    ``await receipt.delivered()`` returns once the remote peer acknowledged the
    message (handed it to its application).  With a snakeMQ 1.6 peer, which
    sends no acknowledgements, it returns once the message was completely
    written to the connection.  That is ``snakemq_proto``'s settlement rule
    (``MessageDelivered``, or ``MessageSent.settled``), the one the sync
    package reports with ``on_message_settled``.
    """

    __slots__ = ("__weakref__", "_error", "_event", "_state", "ident", "uuid")

    def __init__(self, ident: str, uuid: bytes) -> None:
        self.ident = ident
        self.uuid = uuid
        self._state = _PENDING
        self._error: DeliveryError | None = None
        self._event: anyio.Event | None = None

    @property
    def done(self) -> bool:
        """True once the message was delivered or failed."""
        return self._state != _PENDING

    @property
    def error(self) -> DeliveryError | None:
        """Why the message was not delivered, once that is known."""
        return self._error

    async def delivered(self) -> None:
        """Wait until the message is delivered.

        Raises:
            MessageDroppedError: its TTL ran out first.
            MessagingClosedError: the ``Messaging`` closed first.
        """
        while self._state == _PENDING:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self._error is not None:
            raise self._error

    def _resolve(self, error: DeliveryError | None) -> None:
        if self._state != _PENDING:
            return
        self._state = _FAILED if error is not None else _DELIVERED
        self._error = error
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def __repr__(self) -> str:
        state = ("pending", "delivered", "failed")[self._state]
        return f"<Receipt to={self.ident!r} uuid={self.uuid.hex()} {state}>"
