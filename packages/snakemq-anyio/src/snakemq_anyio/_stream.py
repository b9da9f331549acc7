"""The event stream of a ``Messaging`` (``Messaging.events()``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TypeAlias

import anyio
import attrs
from snakemq_proto import (
    ErrorOccurred,
    MessageDelivered,
    MessageDropped,
    MessageSent,
    PeerConnected,
    PeerDisconnected,
)


@attrs.frozen
class ReadingPaused:
    """The receive buffer is full: this connection is not read until the
    application takes messages (``receive()``).  The sender's window and TCP
    then hold the sender back."""

    conn_id: str
    ident: str | None


@attrs.frozen
class ReadingResumed:
    """The receive buffer drained below its low-water mark; reading goes on."""

    conn_id: str
    ident: str | None


MessagingEvent: TypeAlias = (
    PeerConnected
    | PeerDisconnected
    | MessageSent
    | MessageDelivered
    | MessageDropped
    | ErrorOccurred
    | ReadingPaused
    | ReadingResumed
)
"""What ``Messaging.events()`` yields."""


class EventStream:
    """A subscription to a ``Messaging``'s events, oldest first.

    Use it as a context manager (sync or async) so the subscription ends with
    the block, and iterate it with ``async for``.  It holds at most
    ``max_buffered`` events: when the reader falls behind, the oldest are
    dropped and counted in ``lost``.  Iteration ends when the ``Messaging``
    closes.
    """

    def __init__(self, max_buffered: int, unsubscribe: Callable[[EventStream], None]) -> None:
        self._buffer: deque[MessagingEvent] = deque()
        self._max = max_buffered
        self._event: anyio.Event | None = None
        self._closed = False
        self._unsubscribe = unsubscribe
        self.lost = 0
        """Events dropped because the buffer was full."""

    def _push(self, event: MessagingEvent) -> None:
        buffer = self._buffer
        if len(buffer) >= self._max:
            buffer.popleft()
            self.lost += 1
        buffer.append(event)
        waiter = self._event
        if waiter is not None:
            self._event = None
            waiter.set()

    def _end(self) -> None:
        self._closed = True
        waiter = self._event
        if waiter is not None:
            self._event = None
            waiter.set()

    def close(self) -> None:
        """End the subscription; iteration stops once the buffer is drained."""
        if not self._closed:
            self._unsubscribe(self)
            self._end()

    async def receive(self) -> MessagingEvent:
        """Wait for the next event.

        Raises:
            anyio.EndOfStream: the stream was closed and is drained.
        """
        buffer = self._buffer
        while not buffer:
            if self._closed:
                raise anyio.EndOfStream
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return buffer.popleft()

    def receive_nowait(self) -> MessagingEvent:
        """The next event if one is buffered.

        Raises:
            anyio.WouldBlock: none is buffered.
            anyio.EndOfStream: the stream was closed and is drained.
        """
        if self._buffer:
            return self._buffer.popleft()
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> MessagingEvent:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
