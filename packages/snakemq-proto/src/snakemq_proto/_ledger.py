"""The storage ledger: what the engine's storage must change, and how many
queues hold each stored message.

Theory of operation
-------------------

The engine never calls a storage (``_storage``): its objects record changes
here, in a ``StorageBatch`` the I/O layer takes with
``Engine.take_storage_batch()`` and applies in order.

A program may send one ``Message`` object (one uuid) to several peers; each
queue then holds a stored copy.  ``copies`` counts them, so that a copy
leaving one queue deletes that queue's row only (``delete_from``) until the
last copy leaves (``delete``), and a TTL update of a copy touches its queue's
row only (``update_ttl_in``) while there are others.

Spilled messages (``spill()``, see ``PeerQueue``'s Window) are not counted
in ``copies`` until they are read back (``loaded()``): a delete of another
copy leaves them alone, as the storage does not know them by uuid yet.
"""

from __future__ import annotations

from ._message import Message
from ._storage import StorageBatch


class StorageLedger:
    """The changes since the last ``take()`` and the stored copies per uuid.

    Args:
        seen_keep: the de-duplication window a storage keeps per peer.
    """

    __slots__ = ("batch", "copies", "seen_keep", "spilling", "window")

    def __init__(self, seen_keep: int) -> None:
        self.seen_keep = seen_keep
        self.batch = StorageBatch(seen_keep=seen_keep)
        """Collects the changes; replaced by ``take()``, so do not keep it."""
        self.copies: dict[bytes, int] = {}  # uuid -> queues holding it in storage
        self.window = 0
        """Messages a queue holds before persistent sends spill (0: never)."""
        self.spilling: list[str] = []  # idents whose queue started spilling

    def take(self) -> StorageBatch | None:
        """Return the changes collected since the last call, if any."""
        batch = self.batch
        if not batch:
            return None
        self.batch = StorageBatch(seen_keep=self.seen_keep)
        return batch

    def loaded(self, uuid: bytes) -> None:
        """A queue holds a copy restored from the storage."""
        self.copies[uuid] = self.copies.get(uuid, 0) + 1

    def push(self, ident: str, message: Message) -> None:
        """ident's queue holds a new stored copy of ``message``."""
        uuid = message.uuid
        self.copies[uuid] = self.copies.get(uuid, 0) + 1
        self.batch.push.append((ident, message))

    def spill(self, ident: str, message: Message, first: bool) -> None:
        """``message`` goes to ident's queue in the storage only (``first``:
        it starts a run of spilled rows)."""
        self.batch.spill.append((ident, message, first))
        if first:
            self.spilling.append(ident)

    def update_ttl(self, ident: str, uuid: bytes, remaining: float) -> None:
        """The stored copy in ident's queue has ``remaining`` seconds of TTL."""
        if self.copies.get(uuid, 1) > 1:
            self.batch.update_ttl_in.append((ident, uuid, remaining))
        else:
            self.batch.update_ttl.append((uuid, remaining))

    def unstore(self, ident: str, uuid: bytes) -> None:
        """The stored copy in ident's queue left it: delete its row."""
        copies = self.copies
        left = copies.pop(uuid, 1) - 1
        if left > 0:
            # the same message waits in another queue too: delete this copy only
            copies[uuid] = left
            self.batch.delete_from.append((ident, uuid))
        else:
            self.batch.delete.append(uuid)
