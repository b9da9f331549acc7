"""``Inbox``: received messages waiting for the application, and backpressure.

Received messages wait in one bounded buffer.  A reader that finds the buffer
over its limit (``full()``) stops reading its socket until the application
drained it to the low-water mark (``wait_for_space()``); the sender's window
(messages are acknowledged only once taken) and TCP then hold the sender
back.  What the application took is counted per connection (``handed``) until
it is handed to the engine, which acknowledges in batches: at once when the
take emptied the buffer (``hand``: no task to wake for the common request /
reply), else by the acker task once the application yields.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from snakemq_proto import Message, MessageReceived

from ._wakeup import Wakeup

__all__ = ["Inbox"]


class Inbox:
    """The receive buffer of one ``Messaging``."""

    __slots__ = (
        "_handed",
        "_high",
        "_high_bytes",
        "_low",
        "_low_bytes",
        "arrived",
        "hand",
        "nbytes",
        "rx",
        "space",
        "taken",
    )

    def __init__(
        self,
        max_buffered: int,
        max_buffered_bytes: int,
        hand: Callable[[], None] | None = None,
    ) -> None:
        self.rx: deque[MessageReceived] = deque()
        self.nbytes = 0  # payload bytes in ``rx``
        self._high = max_buffered
        self._high_bytes = max_buffered_bytes
        self._low = max_buffered // 2
        self._low_bytes = max_buffered_bytes // 2
        self._handed: dict[str, int] = {}  # taken, not yet handed to the engine
        self.arrived = Wakeup()  # messages were pushed
        self.space = Wakeup()  # the buffer drained to the low-water mark
        self.taken = Wakeup()  # the application took messages (the acker runs)
        self.hand = hand  # hands what was taken to the engine now (no await)

    def __len__(self) -> int:
        return len(self.rx)

    def push(self, event: MessageReceived) -> None:
        """Buffer a received message (call ``arrived.set()`` after a batch)."""
        self.rx.append(event)
        self.nbytes += len(event.message.data)

    def full(self) -> bool:
        """Whether readers should stop reading their sockets."""
        return len(self.rx) >= self._high or self.nbytes >= self._high_bytes

    async def wait_for_space(self) -> None:
        """Return once the buffer drained to the low-water mark."""
        while len(self.rx) > self._low or self.nbytes > self._low_bytes:
            await self.space.wait()

    def pop(self) -> tuple[str, Message]:
        """Take the oldest message (the buffer must not be empty)."""
        event = self.rx.popleft()
        self.nbytes -= len(event.message.data)
        handed = self._handed
        conn_id = event.conn_id
        handed[conn_id] = handed.get(conn_id, 0) + 1
        self._after_take()
        return event.ident, event.message

    def pop_batch(self, max_messages: int) -> list[tuple[str, Message]]:
        """Take up to ``max_messages`` buffered messages, oldest first."""
        rx = self.rx
        handed = self._handed
        popleft = rx.popleft
        nbytes = 0
        batch = []
        for _ in range(min(max_messages, len(rx))):
            event = popleft()
            nbytes += len(event.message.data)
            conn_id = event.conn_id
            handed[conn_id] = handed.get(conn_id, 0) + 1
            batch.append((event.ident, event.message))
        self.nbytes -= nbytes
        self._after_take()
        return batch

    def _after_take(self) -> None:
        hand = self.hand
        if hand is not None and not self.rx:
            hand()  # the buffer is empty: nothing more to batch with
        else:
            self.taken.set()
        if self.space.waiting and len(self.rx) <= self._low and self.nbytes <= self._low_bytes:
            self.space.set()

    def take_handed(self) -> dict[str, int]:
        """Messages taken per connection since the last call."""
        handed = self._handed
        self._handed = {}
        return handed

    def clear(self) -> None:
        """Drop what is buffered and wake every waiting receiver (closing)."""
        self.rx.clear()
        self.nbytes = 0
        self.arrived.set()
