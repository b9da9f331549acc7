"""SQLite queue storage.

Theory of operation
-------------------

One SQLite file holds every persistent outgoing queue of one peer and its
de-duplication window.  The engine never touches it: the I/O layer calls
``apply(batch)`` with the batches taken from the engine, in order, and each
batch becomes exactly one transaction that is committed before ``apply``
returns.  That commit is the durability promise of DESIGN.md.

Schema (version ``SCHEMA_VERSION``, also stored in ``PRAGMA user_version``):

``snakemq_meta(key, value)``
    ``application = snakemq`` and ``schema_version``; with
    ``PRAGMA application_id`` it tells our files from foreign SQLite files.
``snakemq_queue(seq, ident, uuid, data, ttl, flags)``
    one row per stored message; ``seq`` (the rowid) is the insertion order,
    which ``load()`` returns, and the only key: rows are found by ``seq``,
    never by uuid.  The storage keeps ``uuid -> seq`` of the rows it loaded
    or pushed in memory, so an update or delete by uuid is a rowid lookup,
    and since messages leave a queue roughly in the order they were queued,
    the deletes of acknowledged messages touch neighbouring pages however
    large the file is (schema 1 had a unique index on the random uuids: each
    delete touched a random page, 2 µs per delete at 10k rows, 17 µs at 1M).
    Pushing a uuid that is already in the ident's queue replaces the message
    in place, as a dict would.  The index ``(ident, seq)`` reads one queue in
    order.
``snakemq_seen(ident, uuid, seq)``
    the de-duplication window.  ``seq`` counts appends per ident and stays
    contiguous: pruning only ever removes the oldest rows, so the window of
    an ident is exactly the rows with ``min(seq) <= seq <= max(seq)``.  That
    lets ``apply`` reproduce, with two small queries per ident, the exact
    semantics of a bounded ordered set (insert if absent, then drop the
    oldest beyond ``seen_keep``) without loading the window.

Durability: WAL mode with ``synchronous=NORMAL`` by default.  A commit is
then in the WAL file (in the OS page cache) when ``apply`` returns, which
survives a crash or ``kill -9`` of the process; it is fsynced at the next
checkpoint.  ``synchronous="FULL"`` fsyncs every commit, which also survives
a power loss or a kernel crash, at the cost of one fsync per ``apply``.

A snakeMQ 1.6 queue file (one table ``items(queue_name, uuid, data, ttl,
flags)``, uuids as hex) is migrated in place when it is opened: its rows are
copied into this schema in their order and the 1.6 table dropped, all in the
one transaction that opens the file, so the original stays as it was until
that transaction commits.  Stored TTLs are remaining TTLs in both versions.
A schema 1 file is migrated the same way: its queue table is copied into the
schema 2 table (same ``seq``, same order) in the transaction that opens it.

A full disk (theory of operation): a full disk is an error for new sends,
never for deletes of delivered messages.  Three things make that hold:

* ``secure_delete`` is ``FAST`` (Debian builds SQLite with it on, which
  rewrites every freed page: deleting then needs as much new space as the
  deleted messages took);
* a *reserve* file next to the database (``<path>-reserve``,
  ``reserve_bytes`` long) is released the moment SQLite reports the disk
  full, so the deletes, TTL updates and de-dup entries of the batch still
  commit (in small transactions, checkpointed in between so the WAL file is
  reused, not grown); then the freed pages are handed back to the file
  system (``auto_vacuum = INCREMENTAL``) and the pushes are refused with a
  ``StorageError``;
* pushes are written only while the reserve exists: it is made again
  before the next batch with pushes, which succeeds once space came back
  (delivered messages deleted, or space added from outside).  Until then
  every batch with pushes commits its other changes and raises.

Locking: by default the file is opened in SQLite's exclusive locking mode,
so one storage file belongs to one process at a time (two peers sharing a
queue file would deliver every message twice).  A second opener, in this
process or another, gets a ``StorageError`` after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Final, NoReturn

from ._errors import StorageError
from ._message import Message
from ._storage import SPILL_ANCHOR, StorageBatch, StoredState, seen_window_appends

__all__ = ["APPLICATION_ID", "DEFAULT_RESERVE_BYTES", "SCHEMA_VERSION", "SqliteQueuesStorage"]

logger = logging.getLogger("snakemq.storage")

SCHEMA_VERSION: Final = 2
"""The schema this code writes and reads (``PRAGMA user_version``)."""

APPLICATION_ID: Final = 0x534E4D51  # b"SNMQ"
"""``PRAGMA application_id`` of snakemq storage files."""

_APPLICATION: Final = "snakemq"
_SYNCHRONOUS: Final = ("NORMAL", "FULL", "EXTRA")
_OUR_TABLES: Final = frozenset({"snakemq_meta", "snakemq_queue", "snakemq_seen"})
_IN_CHUNK: Final = 500  # host parameters per IN (...) query, well below SQLite's limit
DEFAULT_RESERVE_BYTES: Final = 1024 * 1024
_FREEING_CHUNK: Final = 256  # deletes per transaction while the disk is full
_VACUUM_STEP: Final = 64  # pages handed back to the file system per transaction

_QUEUE_TABLE: Final = """
CREATE TABLE snakemq_queue (
    seq INTEGER PRIMARY KEY,
    ident TEXT NOT NULL,
    uuid BLOB NOT NULL CHECK (typeof(uuid) = 'blob' AND length(uuid) = 16),
    data BLOB NOT NULL CHECK (typeof(data) = 'blob'),
    ttl REAL CHECK (ttl IS NULL OR ttl >= 0),
    flags INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 4294967295)
);
CREATE INDEX snakemq_queue_order ON snakemq_queue (ident, seq)"""

_SCHEMA: Final = f"""
CREATE TABLE snakemq_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
{_QUEUE_TABLE};
CREATE TABLE snakemq_seen (
    ident TEXT NOT NULL,
    uuid BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (ident, uuid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX snakemq_seen_order ON snakemq_seen (ident, seq);
INSERT INTO snakemq_meta (key, value) VALUES
    ('application', '{_APPLICATION}'),
    ('schema_version', '{SCHEMA_VERSION}');
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

_INSERT: Final = (
    "INSERT INTO snakemq_queue (seq, ident, uuid, data, ttl, flags) VALUES (?, ?, ?, ?, ?, ?)"
)
_REPLACE: Final = "UPDATE snakemq_queue SET data = ?, ttl = ?, flags = ? WHERE seq = ?"
_UPDATE_TTL: Final = "UPDATE snakemq_queue SET ttl = ? WHERE seq = ?"
_DELETE: Final = "DELETE FROM snakemq_queue WHERE seq = ?"
_UPDATE_TTL_IN: Final = "UPDATE snakemq_queue SET ttl = ? WHERE seq = ? AND ident = ?"
_DELETE_FROM: Final = "DELETE FROM snakemq_queue WHERE seq = ? AND ident = ?"
_IDENT_OF: Final = "SELECT ident FROM snakemq_queue WHERE seq = ?"
_READ: Final = (
    "SELECT seq, uuid, data, ttl, flags FROM snakemq_queue "
    "WHERE ident = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)
_QUEUE_END: Final = "SELECT max(seq) FROM snakemq_queue WHERE ident = ?"
_NEXT_IDENT: Final = "SELECT min(ident) FROM snakemq_queue WHERE ident > ?"
_DELETE_REST: Final = "DELETE FROM snakemq_queue WHERE ident = ? AND seq > ? AND seq <= ?"
_MIGRATE_1: Final = (
    "ALTER TABLE snakemq_queue RENAME TO snakemq_queue_1",
    *_QUEUE_TABLE.split(";"),
    "INSERT INTO snakemq_queue (seq, ident, uuid, data, ttl, flags) "
    "SELECT seq, ident, uuid, data, ttl, flags FROM snakemq_queue_1 ORDER BY seq",
    "DROP TABLE snakemq_queue_1",
    f"UPDATE snakemq_meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_SEEN_RANGE: Final = (  # two subqueries: each is one index lookup, min+max together a scan
    "SELECT (SELECT min(seq) FROM snakemq_seen WHERE ident = ?), "
    "(SELECT max(seq) FROM snakemq_seen WHERE ident = ?)"
)
_SEEN_INSERT: Final = "INSERT OR REPLACE INTO snakemq_seen (ident, uuid, seq) VALUES (?, ?, ?)"
_SEEN_PRUNE: Final = "DELETE FROM snakemq_seen WHERE ident = ? AND seq < ?"


def _is_locked(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text


def _is_full(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    return name.startswith("SQLITE_FULL") or "disk is full" in text


def _is_corrupt(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    return (
        name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))
        or "not a database" in text
        or "malformed" in text
    )


def _unwritable(path: str) -> str | None:
    """Why an existing storage file cannot be written, or None: SQLite itself
    reports a read-only mount as a mere "disk I/O error"."""
    if not os.path.exists(path):
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        pass
    if not os.access(path, os.W_OK):
        return "the file is read-only"
    if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return "its directory is read-only"
    return None


_LEGACY_16_COLUMNS: Final = ("queue_name", "uuid", "data", "ttl", "flags")


def _is_legacy_16(conn: sqlite3.Connection) -> bool:
    """True for the one table snakeMQ 1.6's ``SqliteQueuesStorage`` creates."""
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(items)"))
    return columns == _LEGACY_16_COLUMNS


_Where = int | dict[str, int]
"""Where a stored uuid is: the ``seq`` of its row, or ``{ident: seq}`` while
it is stored in several queues (a message sent to several peers)."""


def _ident_of(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute(_IDENT_OF, (seq,)).fetchone()
    return None if row is None else str(row[0])


def _remember(
    conn: sqlite3.Connection, where: dict[bytes, _Where], uuid: bytes, ident: str, seq: int
) -> None:
    """Note, while reading the rows in order, that ident's ``uuid`` is row ``seq``."""
    found = where.get(uuid)
    if found is None:
        where[uuid] = seq
        return
    if isinstance(found, int):
        first = _ident_of(conn, found)
        found = {} if first is None else {first: found}
    found.setdefault(ident, seq)
    where[uuid] = found


class _Plan:
    """The rows one batch inserts and replaces, found by ``uuid -> seq``;
    ``undo()`` puts the map back as it was if the transaction fails."""

    __slots__ = ("inserts", "next_seq", "pending", "replaces", "saved", "where")

    def __init__(self, where: dict[bytes, _Where], next_seq: int) -> None:
        self.where = where
        self.next_seq = next_seq
        self.inserts: list[tuple[int, str, bytes, bytes, float | None, int]] = []
        self.replaces: list[tuple[bytes, float | None, int, int]] = []
        self.pending: dict[int, str] = {}  # seq -> ident of the rows inserted here
        self.saved: dict[bytes, _Where | None] = {}

    def _touch(self, uuid: bytes) -> None:
        if uuid not in self.saved:
            found = self.where.get(uuid)
            self.saved[uuid] = dict(found) if isinstance(found, dict) else found

    def _copies(self, conn: sqlite3.Connection, uuid: bytes) -> dict[str, int]:
        found = self.where.get(uuid)
        if found is None or isinstance(found, dict):
            return dict(found or {})
        ident = self.pending.get(found) or _ident_of(conn, found)
        return {} if ident is None else {ident: found}

    def push(self, conn: sqlite3.Connection, ident: str, message: Message) -> None:
        uuid = message.uuid
        copies = self._copies(conn, uuid) if uuid in self.where else {}
        seq = copies.get(ident)
        if seq is not None:  # already in ident's queue: replaced in place
            self.replaces.append((message.data, message.ttl, message.flags, seq))
            return
        self._touch(uuid)
        seq = self.next_seq
        self.next_seq += 1
        self.inserts.append((seq, ident, uuid, message.data, message.ttl, message.flags))
        self.pending[seq] = ident
        self.where[uuid] = {**copies, ident: seq} if copies else seq

    def seqs(self, uuid: bytes, ident: str | None = None) -> list[int]:
        """The rows of ``uuid`` (in ident's queue only, if given; the SQL
        checks the ident of a single row)."""
        found = self.where.get(uuid)
        if found is None:
            return []
        if isinstance(found, int):
            return [found]
        if ident is None:
            return list(found.values())
        seq = found.get(ident)
        return [] if seq is None else [seq]

    def forget(
        self, uuid: bytes, ident: str | None = None, conn: sqlite3.Connection | None = None
    ) -> list[int]:
        """The rows of ``uuid`` to delete (ident's only, if given), no longer in the map."""
        if uuid not in self.where:
            return []
        if ident is None:
            self._touch(uuid)
            found = self.where.pop(uuid)
            return [found] if isinstance(found, int) else list(found.values())
        assert conn is not None
        copies = self._copies(conn, uuid)
        seq = copies.pop(ident, None)
        if seq is None:
            return []
        self._touch(uuid)
        if not copies:
            del self.where[uuid]
        else:
            self.where[uuid] = next(iter(copies.values())) if len(copies) == 1 else copies
        return [seq]

    def forget_rest(self, conn: sqlite3.Connection, ident: str, after: int, end: int) -> None:
        """Rows ``after < seq <= end`` of ident go: those read are forgotten.
        (Rare, a purge: one pass over the map.)"""
        for uuid, found in list(self.where.items()):
            if isinstance(found, int):
                if after < found <= end and _ident_of(conn, found) == ident:
                    self._touch(uuid)
                    del self.where[uuid]
                continue
            seq = found.get(ident)
            if seq is not None and after < seq <= end:
                self._touch(uuid)
                copies = {k: v for k, v in found.items() if k != ident}
                if not copies:
                    del self.where[uuid]
                else:
                    self.where[uuid] = next(iter(copies.values())) if len(copies) == 1 else copies

    def undo(self) -> None:
        where = self.where
        for uuid, found in self.saved.items():
            if found is None:
                where.pop(uuid, None)
            else:
                where[uuid] = found


class SqliteQueuesStorage:
    """Queues persisted in an SQLite file (WAL mode, schema-versioned).

    The file is created when it does not exist (its directory must).  Every
    ``apply`` is one transaction, committed before it returns.  Safe to use
    from several threads (calls are serialised by a lock).

    Args:
        path: the storage file.
        synchronous: SQLite's ``synchronous`` setting.  ``"NORMAL"`` (default)
            keeps every applied batch across a crash or ``kill -9`` of the
            process; ``"FULL"`` also across a power loss or OS crash, at the
            cost of an fsync per ``apply``.
        timeout: seconds to wait for a file locked by someone else before
            giving up with a ``StorageError``.
        exclusive: hold the file locked while it is open, so no other
            process (or second storage object) can use the same queues.
        reserve_bytes: size of the reserve file kept next to the database
            (``<path>-reserve``) and released when the disk is full, so that
            deletes of delivered messages always commit; ``0`` turns it off.

    Raises:
        TypeError, ValueError: a wrong argument.
        StorageError: the file cannot be used: a directory, an unwritable or
            missing location, not an SQLite file (corrupt), a foreign SQLite
            database, a newer schema, or locked by another process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        timeout: float = 1.0,
        exclusive: bool = True,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self.path: str = os.fspath(path)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        self.synchronous: str = synchronous.upper()
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if (
            isinstance(reserve_bytes, bool)
            or not isinstance(reserve_bytes, int)
            or reserve_bytes < 0
        ):
            raise ValueError(f"reserve_bytes must be an int >= 0, got {reserve_bytes!r}")
        self.reserve_bytes: int = reserve_bytes
        self.reserve_path: str = self.path + "-reserve"
        self._reserved = False
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # uuid -> seq of its row, or {ident: seq} while it is stored in several
        # queues; None until the rows are read (by load() or the first apply)
        self._where: dict[bytes, _Where] | None = None
        self._next_seq = 1
        # ident -> the seq before its last run of spilled rows (SPILL_ANCHOR)
        self._spill_from: dict[str, int] = {}
        self._check_location()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=float(timeout),
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            self._fail(exc, "open")
        try:
            self._open(conn, exclusive)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._make_reserve()

    # ------------------------------------------------------------------ open

    def _check_location(self) -> None:
        path = self.path
        if not path or path == ":memory:":
            raise ValueError(
                f"path must name a file on disk, got {path!r} (MemoryQueuesStorage keeps "
                "queues in memory)"
            )
        if os.path.isdir(path):
            raise StorageError(
                f"queue storage {path!r} is a directory; give the path of a file in it, "
                f"e.g. {os.path.join(path, 'queues.sqlite')!r}"
            )
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise StorageError(
                f"cannot create queue storage {path!r}: {parent!r} {what}; "
                "create the directory first or choose another path"
            )

    def _open(self, conn: sqlite3.Connection, exclusive: bool) -> None:
        try:
            if exclusive:
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            # before the schema is created: it only takes effect in an empty file
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA secure_delete = FAST")
            # The lock is taken before the schema is read, so a file being
            # created or used by someone else is reported as locked, never
            # mistaken for a foreign or empty one.
            conn.execute("BEGIN IMMEDIATE")
            try:
                created = self._check_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(
                    f"queue storage {self.path!r} cannot be switched to WAL mode "
                    f"(SQLite kept {mode!r}); put it on a local file system that allows it"
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            self._fail(exc, "open")
        logger.info(
            "%s queue storage %s (schema %d, synchronous=%s)",
            "created" if created else "opened",
            self.path,
            SCHEMA_VERSION,
            self.synchronous,
        )

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """Recognise our schema or create it in an empty file; return True if created."""
        path = self.path
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if not tables and version == 0 and app_id == 0:
            self._create_schema(conn)
            return True
        if tables == {"items"} and version == 0 and app_id == 0 and _is_legacy_16(conn):
            self._migrate_16(conn)
            return False
        application = None
        if "snakemq_meta" in tables:
            row = conn.execute(
                "SELECT value FROM snakemq_meta WHERE key = 'application'"
            ).fetchone()
            application = row[0] if row else None
        if application != _APPLICATION or app_id not in (0, APPLICATION_ID):
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise StorageError(
                f"{path!r} is an SQLite database but not a snakemq queue storage "
                f"(tables: {shown}; user_version {version}, application_id {app_id:#x}); "
                "it was left untouched — give SqliteQueuesStorage a path of its own"
            )
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"queue storage {path!r} has schema version {version}, written by a newer "
                f"snakemq; this version reads up to {SCHEMA_VERSION}. Upgrade snakemq-proto "
                "(the file was left untouched)"
            )
        missing = _OUR_TABLES - tables
        if version == 1 and not missing:
            self._migrate_1(conn)
            return False
        if version < SCHEMA_VERSION or missing:
            raise StorageError(
                f"queue storage {path!r} is damaged (schema version {version}, "
                f"missing tables: {', '.join(sorted(missing)) or 'none'}); "
                "restore it from a backup or move it away to start with empty queues"
            )
        return False

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        # one statement at a time: executescript() would COMMIT first
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)

    def _migrate_1(self, conn: sqlite3.Connection) -> None:
        """Turn a schema 1 file into schema 2 inside the caller's transaction
        (the rows keep their ``seq``, so their order): until it commits the
        file is as it was."""
        for statement in _MIGRATE_1:
            conn.execute(statement)
        logger.warning(
            "migrated queue storage %r from schema 1 to %d (queue rows keyed by their order)",
            self.path,
            SCHEMA_VERSION,
        )

    def _migrate_16(self, conn: sqlite3.Connection) -> None:
        """Turn a snakeMQ 1.6 queue file into ours, inside the caller's
        transaction: until it commits the 1.6 table is untouched, so a crash
        or an error leaves the original file as it was."""
        rows: dict[tuple[str, bytes], tuple[str, bytes, bytes, float | None, int]] = {}
        for rowid, ident, hex_uuid, data, ttl, flags in conn.execute(
            "SELECT rowid, queue_name, uuid, data, ttl, flags FROM items ORDER BY rowid"
        ):
            try:
                if isinstance(hex_uuid, bytes):  # 1.6 on Python 3 stored b2a_hex() bytes
                    hex_uuid = hex_uuid.decode("ascii")
                uuid = bytes.fromhex(hex_uuid)
                if len(uuid) != 16 or not isinstance(ident, str):
                    raise ValueError(f"uuid {hex_uuid!r}, queue {ident!r}")
                if isinstance(data, str):
                    data = data.encode()
                if not isinstance(data, bytes):
                    raise ValueError(f"data of type {type(data).__name__}")
                if ttl is not None:
                    ttl = max(0.0, float(ttl))  # an expired 1.6 message is dropped at load
                flags = int(flags or 0) & 0xFFFFFFFF
            except (TypeError, ValueError, UnicodeDecodeError) as exc:
                raise StorageError(
                    f"queue storage {self.path!r} is a snakeMQ 1.6 queue file, but its row "
                    f"{rowid} cannot be read ({exc}); it was left untouched — fix or delete "
                    "that row with the sqlite3 shell, then open it again"
                ) from exc
            # a uuid stored twice in one 1.6 queue is one message, in its first place
            rows[ident, uuid] = (ident, uuid, data, ttl, flags)
        self._create_schema(conn)
        conn.executemany(_INSERT, [(seq, *row) for seq, row in enumerate(rows.values(), 1)])
        conn.execute("DROP TABLE items")
        logger.warning(
            "migrated snakeMQ 1.6 queue storage %r to schema %d: %d queued message(s) kept",
            self.path,
            SCHEMA_VERSION,
            len(rows),
        )

    def _fail(self, exc: sqlite3.Error, doing: str) -> NoReturn:
        path = self.path
        if _is_locked(exc):
            raise StorageError(
                f"queue storage {path!r} is locked: another process (or another "
                "SqliteQueuesStorage in this one) is using it. Stop the other user or "
                f"give this peer its own file ({exc})"
            ) from exc
        if _is_corrupt(exc):
            raise StorageError(
                f"queue storage {path!r} is corrupt or not an SQLite file ({exc}); "
                "restore it from a backup, or move it away to start with empty queues"
            ) from exc
        text = str(exc).lower()
        unwritable = _unwritable(path)
        if unwritable:
            raise StorageError(
                f"cannot {doing} queue storage {path!r}: the location is not writable "
                f"({unwritable}; SQLite said: {exc}); the queues need a writable file, "
                "-wal/-shm files and directory: remount it read-write, fix the permissions "
                "or choose another path"
            ) from exc
        if "readonly" in text or "unable to open" in text or "read-only" in text:
            raise StorageError(
                f"cannot {doing} queue storage {path!r}: the location is not writable "
                f"({exc}); check the permissions of the file, its -wal/-shm files and "
                "its directory"
            ) from exc
        raise StorageError(f"cannot {doing} queue storage {path!r}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StorageError(f"queue storage {self.path!r} is closed")
        return conn

    # ------------------------------------------------------------------- API

    def load(self) -> StoredState:
        """Return every stored queue (oldest message first; ``ttl`` is the
        remaining TTL) and the de-duplication window of every ident.

        Raises:
            StorageError: the storage is closed or the file cannot be read.
        """
        with self._lock:
            conn = self._connection()
            try:
                queues: dict[str, list[Message]] = {}
                where: dict[bytes, _Where] = {}
                seq = 0
                trusted = Message._trusted
                for seq, ident, uuid, data, ttl, flags in conn.execute(
                    "SELECT seq, ident, uuid, data, ttl, flags FROM snakemq_queue ORDER BY seq"
                ):
                    queue = queues.get(ident)
                    if queue is None:
                        queue = queues[ident] = []
                    # The table's CHECK constraints validated every field.
                    message = trusted(data, ttl, flags, uuid)
                    queue.append(message)
                    _remember(conn, where, message.uuid, ident, seq)
                seen = self._load_seen(conn)
            except sqlite3.Error as exc:
                self._fail(exc, "read")
            self._where, self._next_seq = where, seq + 1
        return StoredState(queues=queues, seen=seen)

    def load_window(self, window: int) -> StoredState:
        """Like ``load()``, but at most ``window`` messages of each queue (the
        oldest); ``rest`` names where the others are (``read_queue``).  Each
        queue costs a few index lookups, whatever its length.

        Raises:
            ValueError: ``window`` is not an int >= 1.
            StorageError: the storage is closed or the file cannot be read.
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        with self._lock:
            conn = self._connection()
            try:
                queues: dict[str, list[Message]] = {}
                rest: dict[str, tuple[int, int]] = {}
                where: dict[bytes, _Where] = {}
                (top,) = conn.execute("SELECT max(seq) FROM snakemq_queue").fetchone()
                ident = conn.execute("SELECT min(ident) FROM snakemq_queue").fetchone()[0]
                while ident is not None:
                    rows = self._read(conn, where, ident, 0, top or 0, window)
                    queues[ident] = [m for _, m in rows]
                    (end,) = conn.execute(_QUEUE_END, (ident,)).fetchone()
                    if rows[-1][0] < end:
                        rest[ident] = (rows[-1][0], end)
                    ident = conn.execute(_NEXT_IDENT, (ident,)).fetchone()[0]
                seen = self._load_seen(conn)
            except sqlite3.Error as exc:
                self._fail(exc, "read")
            self._where, self._next_seq = where, (top or 0) + 1
        return StoredState(queues=queues, seen=seen, rest=rest, window=window)

    def read_queue(self, ident: str, after: int, end: int, count: int) -> list[tuple[int, Message]]:
        """``(seq, message)`` of ident's next ``count`` rows with
        ``after < seq <= end``, oldest first, as stored.

        Raises:
            StorageError: the storage is closed or the file cannot be read.
        """
        with self._lock:
            conn = self._connection()
            anchored = after == SPILL_ANCHOR
            if anchored:
                found = self._spill_from.get(ident)
                if found is None:
                    return []  # the run's first row is not applied yet
                after = found
            try:
                rows = self._read(conn, self._rows(conn), ident, after, end, count)
            except sqlite3.Error as exc:
                self._fail(exc, "read")
            if anchored and rows:
                del self._spill_from[ident]  # the engine goes on from the rows' seqs
            return rows

    @staticmethod
    def _read(
        conn: sqlite3.Connection,
        where: dict[bytes, _Where],
        ident: str,
        after: int,
        end: int,
        count: int,
    ) -> list[tuple[int, Message]]:
        trusted = Message._trusted
        rows = []
        for seq, uuid, data, ttl, flags in conn.execute(_READ, (ident, after, end, count)):
            message = trusted(data, ttl, flags, uuid)
            rows.append((seq, message))
            _remember(conn, where, message.uuid, ident, seq)
        return rows

    @staticmethod
    def _load_seen(conn: sqlite3.Connection) -> dict[str, list[bytes]]:
        seen: dict[str, list[bytes]] = {}
        for ident, uuid in conn.execute("SELECT ident, uuid FROM snakemq_seen ORDER BY ident, seq"):
            window = seen.get(ident)
            if window is None:
                window = seen[ident] = []
            window.append(uuid)
        return seen

    def _rows(self, conn: sqlite3.Connection) -> dict[bytes, _Where]:
        """``uuid -> seq`` of every stored row (read once, then kept up to date)."""
        where = self._where
        if where is None:
            where = {}
            seq = 0
            try:
                for seq, ident, uuid in conn.execute(
                    "SELECT seq, ident, uuid FROM snakemq_queue ORDER BY seq"
                ):
                    _remember(conn, where, uuid, ident, seq)
            except sqlite3.Error as exc:
                self._fail(exc, "read")
            self._where, self._next_seq = where, seq + 1
        return where

    def apply(self, batch: StorageBatch) -> None:
        """Apply ``batch`` in one transaction: pushes, TTL updates, deletes,
        then seen uuids (pruned to ``batch.seen_keep`` per ident).  The
        transaction is committed when this returns.

        On a full disk the batch's other changes are committed all the same
        (deletes first) and only its pushes are refused: ``StorageError`` is
        raised and applying the batch again later is safe.

        Raises:
            StorageError: the storage is closed or the write failed (the
                transaction is then rolled back: nothing of the batch is kept,
                except on a full disk, see above).
        """
        with self._lock:
            conn = self._connection()
            if not batch:
                return
            gone = set(batch.delete)
            # A message pushed and deleted in the same batch never reaches the
            # file; the delete still runs for copies stored by earlier batches.
            if gone:
                push = [(ident, m) for ident, m in batch.push if m.uuid not in gone]
                update = [(uuid, ttl) for uuid, ttl in batch.update_ttl if uuid not in gone]
            else:
                push, update = batch.push, batch.update_ttl
            pushes = len(push) + len(batch.spill)  # a spilled row is another copy: kept
            if pushes and self.reserve_bytes and not self._reserved and not self._regain_reserve():
                self._apply_freeing(conn, batch, update)
                self._refuse_pushes(pushes, None)
            try:
                self._transaction(conn, push, update, batch)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    self._fail(exc, "write")
                self._release_reserve()
                self._apply_freeing(conn, batch, update)
                if pushes:
                    self._refuse_pushes(pushes, exc)

    def _transaction(
        self,
        conn: sqlite3.Connection,
        push: list[tuple[str, Message]],
        update: list[tuple[bytes, float | None]],
        batch: StorageBatch,
    ) -> None:
        """One transaction of ``push``, ``update`` and the rest of ``batch``,
        every row addressed by its ``seq``; the ``uuid -> seq`` map changes
        with the commit (it is restored if the transaction fails)."""
        where = self._rows(conn)
        plan = _Plan(where, self._next_seq)
        anchors = dict(self._spill_from)
        try:
            for ident, message in push:
                plan.push(conn, ident, message)
            for ident, message, first in batch.spill:
                # not in the map: the engine does not hold it until it reads it
                if first:
                    anchors[ident] = plan.next_seq - 1
                plan.inserts.append(
                    (plan.next_seq, ident, message.uuid, message.data, message.ttl, message.flags)
                )
                plan.next_seq += 1
            rest = [
                (ident, anchors.pop(ident, end) if after == SPILL_ANCHOR else after, end)
                for ident, after, end in batch.delete_rest
            ]
            updates = [(ttl, seq) for uuid, ttl in update for seq in plan.seqs(uuid)]
            updates_in = [
                (ttl, seq, ident)
                for ident, uuid, ttl in batch.update_ttl_in
                for seq in plan.seqs(uuid, ident)
            ]
            deletes = [(seq,) for uuid in batch.delete for seq in plan.forget(uuid)]
            for ident, after, end in rest:
                plan.forget_rest(conn, ident, after, end)
            deletes_from = [
                (seq, ident)
                for ident, uuid in batch.delete_from
                for seq in plan.forget(uuid, ident, conn)
            ]
            conn.execute("BEGIN IMMEDIATE")
            try:
                if plan.inserts:
                    conn.executemany(_INSERT, plan.inserts)
                if plan.replaces:
                    conn.executemany(_REPLACE, plan.replaces)
                if updates:
                    conn.executemany(_UPDATE_TTL, updates)
                if updates_in:
                    conn.executemany(_UPDATE_TTL_IN, updates_in)
                if deletes:
                    conn.executemany(_DELETE, deletes)
                if deletes_from:
                    conn.executemany(_DELETE_FROM, deletes_from)
                if rest:
                    conn.executemany(_DELETE_REST, rest)
                if batch.seen:
                    self._apply_seen(conn, batch.seen, batch.seen_keep)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            plan.undo()
            raise
        self._next_seq = plan.next_seq
        self._spill_from = anchors

    # ------------------------------------------------------------ full disk

    def _apply_freeing(
        self,
        conn: sqlite3.Connection,
        batch: StorageBatch,
        update: list[tuple[bytes, float | None]],
    ) -> None:
        """Everything of ``batch`` but its pushes, on a full disk: deletes in
        small checkpointed transactions (the WAL is reused, not grown), then
        the rest; then the freed pages go back to the file system."""
        empty = StorageBatch()
        try:
            for start in range(0, len(batch.delete), _FREEING_CHUNK):
                chunk = StorageBatch(delete=batch.delete[start : start + _FREEING_CHUNK])
                self._transaction(conn, [], [], chunk)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            for start in range(0, len(batch.delete_from), _FREEING_CHUNK):
                chunk = StorageBatch(delete_from=batch.delete_from[start : start + _FREEING_CHUNK])
                self._transaction(conn, [], [], chunk)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            rest = StorageBatch(
                update_ttl_in=batch.update_ttl_in,
                seen=batch.seen,
                seen_keep=batch.seen_keep,
                delete_rest=batch.delete_rest,
            )
            if update or rest:
                self._transaction(conn, [], update, rest if rest else empty)
            self._give_back_free_pages(conn)
        except sqlite3.Error as exc:
            self._fail(exc, "write")

    def _give_back_free_pages(self, conn: sqlite3.Connection) -> None:
        """Shrink the file by its free pages (``auto_vacuum = INCREMENTAL``)."""
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        while conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            before = conn.execute("PRAGMA page_count").fetchone()[0]
            # executescript: a plain execute() runs one step, moving one page
            conn.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP});")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if conn.execute("PRAGMA page_count").fetchone()[0] >= before:
                break  # a file made without auto_vacuum keeps its free pages
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _refuse_pushes(self, count: int, exc: sqlite3.Error | None) -> NoReturn:
        cause = f" ({exc})" if exc is not None else ""
        raise StorageError(
            f"queue storage {self.path!r}: the disk is full{cause}; {count} new persistent "
            "message(s) could not be stored (deletes and other changes were committed). "
            "They stay queued in memory only; free space on the disk"
        ) from exc

    def _make_reserve(self) -> bool:
        """Write the reserve file; False (and no partial file) if it does not fit."""
        if not self.reserve_bytes:
            return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            logger.warning("cannot create the reserve file %r: %s", self.reserve_path, exc)
            return False
        try:
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                block = b"\0" * 65536
                for _ in range(0, self.reserve_bytes, len(block)):
                    os.write(fd, block)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.reserve_path)
            return False
        os.close(fd)
        self._reserved = True
        return True

    def _regain_reserve(self) -> bool:
        """Make the reserve again, handing free pages back first if needed."""
        if self._make_reserve():
            logger.warning(
                "queue storage %r: disk space is back, new messages are stored", self.path
            )
            return True
        with contextlib.suppress(sqlite3.Error):
            self._give_back_free_pages(self._connection())
        return self._make_reserve()

    def _release_reserve(self) -> None:
        if self._reserved:
            self._reserved = False
            with contextlib.suppress(OSError):
                os.unlink(self.reserve_path)
            logger.error(
                "queue storage %r: the disk is full; released the %d-byte reserve so that "
                "delivered messages can still be deleted. New persistent messages are not "
                "stored until space is free again",
                self.path,
                self.reserve_bytes,
            )

    def _apply_seen(
        self, conn: sqlite3.Connection, seen: Iterable[tuple[str, bytes]], keep: int
    ) -> None:
        by_ident: dict[str, list[bytes]] = {}
        for ident, uuid in seen:
            uuids = by_ident.get(ident)
            if uuids is None:
                uuids = by_ident[ident] = []
            uuids.append(uuid)
        for ident, uuids in by_ident.items():
            low, high = conn.execute(_SEEN_RANGE, (ident, ident)).fetchone()
            if low is None:
                low = high = 0
            else:
                high += 1
            # position of each uuid of the batch that is already stored
            position: dict[bytes, int] = {}
            distinct = list(dict.fromkeys(uuids))
            for start in range(0, len(distinct), _IN_CHUNK):
                chunk = distinct[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                position.update(
                    conn.execute(
                        f"SELECT uuid, seq FROM snakemq_seen WHERE ident = ? AND uuid IN ({marks})",
                        (ident, *chunk),
                    ).fetchall()
                )
            appended, low = seen_window_appends(uuids, position, low, high, keep)
            rows = [(ident, uuid, at) for uuid, at in appended.items() if at >= low]
            if rows:
                conn.executemany(_SEEN_INSERT, rows)
            conn.execute(_SEEN_PRUNE, (ident, low))

    def close(self) -> None:
        """Close the file (idempotent).  Later ``load``/``apply`` calls raise
        ``StorageError``."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
                if self._reserved:
                    self._reserved = False
                    with contextlib.suppress(OSError):
                        os.unlink(self.reserve_path)
                logger.debug("closed queue storage %s", self.path)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._conn is None

    def __enter__(self) -> SqliteQueuesStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<SqliteQueuesStorage {self.path!r} {state}>"
