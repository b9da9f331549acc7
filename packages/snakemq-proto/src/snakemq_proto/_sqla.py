"""Queues in a database server, through SQLAlchemy 2 Core (PostgreSQL).

Theory of operation
-------------------

The same contract as ``SqliteQueuesStorage``: the I/O layer calls
``apply(batch)`` with the engine's batches in order; each batch is one
transaction, committed before ``apply`` returns (PostgreSQL's default
``synchronous_commit = on``: the commit is in the server's WAL, on disk).

Several peers share one database.  The storage is opened *per identifier*
(the ``owner``, this peer's ident, given as ``ident=`` or bound by
``Messaging`` with ``bind(ident)``): every row carries its owner and every
statement is restricted to it, so one peer never reads, deletes or ages
another's rows.

Schema (``SCHEMA_VERSION`` in ``snakemq_meta``):

``snakemq_meta(key, value)``
    ``application = snakemq``, ``schema_version``.
``snakemq_queue(seq, owner, ident, uuid, data, ttl, flags)``
    one row per stored message of ``owner`` waiting for ``ident``; ``seq``
    is the insertion order.
``snakemq_seen(owner, ident, uuid, seq)``
    the de-duplication window, kept contiguous per ``(owner, ident)`` as in
    the SQLite storage (``seen_window_appends``).

A database written by snakeMQ 1.6's ``SqlAlchemyQueuesStorage`` (one table,
``snakemq_items``, with no owner: 1.6 gave each peer its own database) is
migrated when a peer first opens it: its rows move, in order, into
``snakemq_queue`` under that peer's ident, and the old table is renamed
``snakemq_items_16`` (kept, never dropped) — all in one transaction.

One identity, one holder (PostgreSQL): the storage takes a *session
advisory lock* keyed by its owner on its own connection.  The server
releases it when that connection dies (the process was killed, the machine
lost), so a standby waiting in ``try_acquire(wait=...)`` takes over at
once (``pg_advisory_lock`` under ``lock_timeout``).  ``load`` and
``apply`` refuse to run without the lock.  If the connection breaks (the
server restarted), the next call reconnects and takes the lock again; if a
standby took it meanwhile, the call raises ``StorageError`` and the storage
stays unusable: this process is no longer the holder.

Connection loss: a call that fails because the connection broke is retried
once on a new connection (its transaction was rolled back, and every batch
is idempotent); if that fails too, ``StorageError`` is raised and the
caller keeps the batch to retry.

A server that stops answering (hung, or the network dropped without a
reset) is noticed in bounded time: every call has ``call_timeout`` seconds
(default 10); past it, a watchdog thread shuts the connection's socket
down, which ends the blocked call with a broken connection (then as
above).  TCP keepalives are on, on both ends (libpq's ``keepalives*`` and
the server's ``tcp_keepalives_*`` for the session): a peer machine that
vanished is dropped by the server within about ``KEEPALIVE_IDLE +
KEEPALIVE_INTERVAL * KEEPALIVE_COUNT`` seconds, which releases its lease.
``connect_args`` given to the constructor override each of these.

Renewing the lease: ``check_lease()`` (called every ``lease_poll`` seconds
by a holder, see ``LeaseWatch``) runs one round trip; a broken connection
is replaced and the lock taken again, and if another process holds it now
this one has lost it (``lost``; ``LeaseLostError`` from every call).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

from ._errors import LeaseLostError, StorageError
from ._message import Message, check_ident
from ._sqlite import SqliteQueuesStorage
from ._storage import QueuesStorage, StorageBatch, StoredState, seen_window_appends

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["SCHEMA_VERSION_SQLA", "SqlAlchemyQueuesStorage", "storage_at"]

logger = logging.getLogger("snakemq.storage")

SCHEMA_VERSION_SQLA: Final = 1
"""The schema version this code writes and reads in ``snakemq_meta``."""

_APPLICATION: Final = "snakemq"
_DIALECTS: Final = ("postgresql", "sqlite")
_IN_CHUNK: Final = 500
#: rows pushed (and at least as many as the owner had) before an ANALYZE
ANALYZE_AFTER: Final = 10_000
# the writes of ``_write_pg`` (psycopg's parameter style)
_PG_UPDATE_TTL: Final = "UPDATE snakemq_queue SET ttl = %(t)s WHERE owner = %(o)s AND uuid = %(u)s"
_PG_UPDATE_TTL_IN: Final = (
    "UPDATE snakemq_queue SET ttl = %(t)s WHERE owner = %(o)s AND ident = %(i)s AND uuid = %(u)s"
)
_PG_DELETE: Final = "DELETE FROM snakemq_queue WHERE owner = %(o)s AND uuid = ANY(%(us)s)"
_PG_DELETE_FROM: Final = (
    "DELETE FROM snakemq_queue WHERE owner = %(o)s AND ident = %(i)s AND uuid = %(u)s"
)
_SCHEMA_LOCK: Final = 0x534E4D51_00000001  # advisory lock serialising schema creation
_T = TypeVar("_T")
_LOCK_NOT_AVAILABLE: Final = "55P03"  # SQLSTATE of a lock_timeout

CALL_TIMEOUT: Final = 10.0
"""Default seconds one storage call may wait for the server."""
KEEPALIVE_IDLE: Final = 10
"""Seconds of silence on the connection before TCP keepalive probes start."""
KEEPALIVE_INTERVAL: Final = 5
"""Seconds between two keepalive probes."""
KEEPALIVE_COUNT: Final = 3
"""Unanswered probes after which the connection is dropped."""


def lease_key(ident: str) -> int:
    """The 64-bit advisory lock key of ``ident`` (the same in every process)."""
    digest = hashlib.blake2b(b"snakemq ident\0" + ident.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _mask(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for unparsable URLs)."""
    return re.sub(r":[^:@/]*@", ":***@", url)


class _Tables:
    """The schema, built when sqlalchemy is imported (it is optional)."""

    def __init__(self, sa: Any) -> None:
        self.metadata = md = sa.MetaData()
        big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # rowid alias on SQLite
        self.meta = sa.Table(
            "snakemq_meta",
            md,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(256), nullable=False),
        )
        self.queue = sa.Table(
            "snakemq_queue",
            md,
            sa.Column("seq", big, primary_key=True, autoincrement=True),
            sa.Column("owner", sa.String(50), nullable=False),
            sa.Column("ident", sa.String(50), nullable=False),
            sa.Column("uuid", sa.LargeBinary(16), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.Column("ttl", sa.Double(), nullable=True),
            sa.Column("flags", sa.BigInteger(), nullable=False),
            sa.UniqueConstraint("owner", "uuid", "ident", name="snakemq_queue_key"),
        )
        self.seen = sa.Table(
            "snakemq_seen",
            md,
            sa.Column("owner", sa.String(50), primary_key=True),
            sa.Column("ident", sa.String(50), primary_key=True),
            sa.Column("uuid", sa.LargeBinary(16), primary_key=True),
            sa.Column("seq", sa.BigInteger(), nullable=False),
        )
        sa.Index("snakemq_seen_order", self.seen.c.owner, self.seen.c.ident, self.seen.c.seq)
        self.legacy = sa.Table(  # snakeMQ 1.6's table
            "snakemq_items",
            sa.MetaData(),
            sa.Column("id_", sa.Integer, primary_key=True),
            sa.Column("queue_name", sa.String(50)),
            sa.Column("uuid", sa.String(32), unique=True),
            sa.Column("data", sa.LargeBinary),
            sa.Column("flags", sa.Integer),
            sa.Column("ttl", sa.Float),
        )


class _Statements:
    """The statements ``apply`` runs, built once (bound parameters only)."""

    def __init__(self, sa: Any, t: _Tables, dialect: Any) -> None:
        bp = sa.bindparam
        q, s = t.queue.c, t.seen.c
        insert: Any
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        upsert = insert(t.queue)
        self.upsert = upsert.on_conflict_do_update(
            index_elements=[q.owner, q.uuid, q.ident],
            set_={
                "data": upsert.excluded.data,
                "ttl": upsert.excluded.ttl,
                "flags": upsert.excluded.flags,
            },
        )
        self.update_ttl = (
            sa.update(t.queue).where(q.owner == bp("o"), q.uuid == bp("u")).values(ttl=bp("t"))
        )
        self.update_ttl_in = (
            sa.update(t.queue)
            .where(q.owner == bp("o"), q.ident == bp("i"), q.uuid == bp("u"))
            .values(ttl=bp("t"))
        )
        self.delete = sa.delete(t.queue).where(
            q.owner == bp("o"), q.uuid.in_(bp("us", expanding=True))
        )
        self.delete_from = sa.delete(t.queue).where(
            q.owner == bp("o"), q.ident == bp("i"), q.uuid == bp("u")
        )
        mine = (s.owner == bp("o"), s.ident == bp("i"))
        self.seen_bounds = sa.select(sa.func.min(s.seq), sa.func.max(s.seq)).where(*mine)
        self.seen_find = sa.select(s.uuid, s.seq).where(*mine, s.uuid.in_(bp("us", expanding=True)))
        self.seen_prune = sa.delete(t.seen).where(*mine, s.seq < bp("low"))
        self.seen_forget = sa.delete(t.seen).where(*mine, s.uuid.in_(bp("us", expanding=True)))
        self.seen_insert = sa.insert(t.seen)
        #: the upsert in the driver's own SQL (``_one_statement``)
        self.upsert_sql = str(
            self.upsert.inline().compile(
                dialect=dialect, column_keys=["owner", "ident", "uuid", "data", "ttl", "flags"]
            )
        )


class SqlAlchemyQueuesStorage:
    """Persistent queues in a database server (PostgreSQL) shared by peers.

    ``pip install "snakemq-proto[postgresql]"`` brings SQLAlchemy 2 and
    psycopg 3.  A ``postgresql://`` URL uses psycopg 3.  SQLite URLs work too
    (without the lease), mostly for tests.

    Args:
        args, kwargs: passed to ``sqlalchemy.create_engine`` (as in
            snakeMQ 1.6), e.g. ``"postgresql://user:password@host/db"``.
        ident: the peer that owns the queues (``Messaging`` binds it when
            omitted).
        lease: hold the identity's advisory lock (PostgreSQL) so only one
            process serves ``ident``; ``False`` turns it off.
        lease_poll: seconds a standby's attempt to take the lock waits on
            the server (``take_over_attempt``), and between a holder's
            checks that it still holds it.
        connect_timeout: seconds to wait for the server when connecting.
        call_timeout: seconds one call (a transaction) may wait for the
            server before its connection is dropped (a hung server).

    Raises:
        TypeError, ValueError: a wrong argument.
        StorageError: the URL is malformed or its driver missing, the server
            is unreachable, the credentials are refused, or the database
            holds a foreign or newer snakemq schema.  The message names the
            URL (password masked) and what to do.
    """

    def __init__(
        self,
        *args: Any,
        ident: str | None = None,
        lease: bool = True,
        lease_poll: float = 1.0,
        connect_timeout: float = 5.0,
        call_timeout: float = CALL_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        try:
            import sqlalchemy as sa
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise StorageError(
                'SqlAlchemyQueuesStorage needs SQLAlchemy 2: pip install "snakemq[postgresql]"'
            ) from exc
        if isinstance(lease_poll, bool) or not isinstance(lease_poll, int | float):
            raise TypeError(f"lease_poll must be a number of seconds, got {lease_poll!r}")
        if not lease_poll > 0:
            raise ValueError(f"lease_poll must be > 0 seconds, got {lease_poll!r}")
        if isinstance(call_timeout, bool) or not isinstance(call_timeout, int | float):
            raise TypeError(f"call_timeout must be a number of seconds, got {call_timeout!r}")
        if not call_timeout > 0:
            raise ValueError(f"call_timeout must be > 0 seconds, got {call_timeout!r}")
        self.call_timeout = float(call_timeout)
        self.connect_timeout = float(connect_timeout)
        self._watch = threading.Condition()  # the watchdog of calls that hang
        self._call_until: float | None = None  # the deadline of the attempt in flight
        self._calls = 0  # attempts so far
        self._watch_idle = True  # the watchdog sleeps until a call wakes it
        self._watch_wake = 0.0  # else when it wakes up next
        self._watchdog: threading.Thread | None = None
        self._aborted = False
        self._sa = sa
        self._t = _Tables(sa)
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        self._closed = False
        self._owner: str | None = None
        self._held = False
        self._lost = False
        self._st: _Statements | None = None
        self._pushed = 0  # rows pushed since the last ANALYZE
        self._analyzed = 0  # rows the owner had then (about)
        self.lease_poll = float(lease_poll)
        shown = _mask(str(args[0])) if args else _mask(str(kwargs.get("url", "")))
        self.url = shown
        try:
            url = sa.make_url(args[0] if args else kwargs.pop("url"))
        except (sa.exc.ArgumentError, KeyError, IndexError, ValueError, TypeError) as exc:
            raise StorageError(
                f"queue storage URL {shown!r} is not a database URL ({exc}); write it as "
                "postgresql://user:password@host:port/database"
            ) from exc
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        self.url = url.render_as_string(hide_password=True)
        self.dialect = url.get_backend_name()
        if self.dialect not in _DIALECTS:
            raise StorageError(
                f"queue storage {self.url!r}: database {self.dialect!r} is not supported; "
                "use PostgreSQL (postgresql://...) or an SQLite file with SqliteQueuesStorage"
            )
        if self.dialect == "postgresql":
            connect_args = kwargs.setdefault("connect_args", {})
            connect_args.setdefault("connect_timeout", max(1, round(connect_timeout)))
            for key, value in (
                ("keepalives", 1),
                ("keepalives_idle", KEEPALIVE_IDLE),
                ("keepalives_interval", KEEPALIVE_INTERVAL),
                ("keepalives_count", KEEPALIVE_COUNT),
            ):
                connect_args.setdefault(key, value)
            # the server's end of the same: it drops a vanished holder's
            # session (and so its lease) as soon
            connect_args.setdefault(
                "options",
                f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} "
                f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL} "
                f"-c tcp_keepalives_count={KEEPALIVE_COUNT}",
            )
        self._lease = lease and self.dialect == "postgresql"
        try:
            self._engine = sa.create_engine(url, *args[1:], **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StorageError(
                f"queue storage {self.url!r}: cannot use this URL ({exc}); for PostgreSQL "
                'install the driver with pip install "snakemq[postgresql]"'
            ) from exc
        try:
            self._run("open", self._check_schema, lease=False)
            if ident is not None:
                self.bind(ident)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ connection

    def _fail(self, exc: BaseException, doing: str, *, hung: bool = False) -> NoReturn:
        text = str(getattr(exc, "orig", None) or exc)
        low = text.lower()
        url = self.url
        if hung:
            hint = (
                f"the server did not answer in {self.call_timeout:g} s (call_timeout); "
                "the connection was dropped and the next call reconnects"
            )
        elif "password authentication failed" in low or "authentication failed" in low:
            hint = "the server refused the user name or password; check them in the URL"
        elif "does not exist" in low and "database" in low:
            hint = "the database does not exist; create it (CREATE DATABASE) or fix the URL"
        elif any(
            word in low
            for word in (
                "connection refused",
                "could not connect",
                "timeout",
                "timed out",
                "resolve host",
            )
        ):
            hint = "the server cannot be reached; start it or fix host and port in the URL"
        elif "server closed the connection" in low or "terminating connection" in low:
            hint = "the connection to the server was lost; the next call reconnects"
        else:
            hint = "see the database's message"
        text = text.strip().replace("\n", " ")
        raise StorageError(f"cannot {doing} queue storage {url!r}: {hint} ({text})") from exc

    def _lost_error(self) -> LeaseLostError:
        return LeaseLostError(
            f"queue storage {self.url!r}: ident {self._owner!r} was taken over by another "
            "process while the connection to the server was lost; this process no longer "
            "serves it (stop it, or restart it as a standby)"
        )

    def _connection(self) -> Connection:
        if self._closed:
            raise StorageError(f"queue storage {self.url!r} is closed")
        if self._lost:
            raise self._lost_error()
        conn = self._conn
        if conn is None:
            conn = self._conn = self._engine.connect()
            if self._held:  # reconnected: the server released the lock with the old session
                with conn.begin():
                    kept = self._try_lock(conn)
                if not kept:
                    self._held = False
                    self._lost = True
                    logger.error(
                        "queue storage %s: lost ident %r to another process", self.url, self._owner
                    )
                    return self._connection()
                logger.warning("queue storage %s: reconnected, lease kept", self.url)
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # pragma: no cover - already broken
                pass

    def _run(self, doing: str, work: Callable[[Connection], _T], *, lease: bool = True) -> _T:
        """Run ``work`` in one transaction, retried once on a new connection
        when the connection broke (the transaction was rolled back)."""
        sa = self._sa
        with self._lock:
            if self._closed:
                raise StorageError(f"queue storage {self.url!r} is closed")
            if self._lost:
                raise self._lost_error()
            if lease and self._lease and not self._held:
                raise StorageError(
                    f"queue storage {self.url!r}: this process does not hold ident "
                    f"{self._owner!r} (it is a standby); wait for try_acquire() to succeed"
                )
            # the retry gets what is left of call_timeout + connect_timeout:
            # a call (a lease check in the sync loop thread) never waits longer
            until = time.monotonic() + self.call_timeout
            budget = until + self.connect_timeout
            for attempt in (0, 1):
                was_connected = self._conn is not None
                try:
                    with self._deadline(until if attempt == 0 else budget):
                        conn = self._connection()
                        with conn.begin():
                            return work(conn)
                except sa.exc.DBAPIError as exc:
                    hung = self._aborted
                    broken = (
                        hung
                        or exc.connection_invalidated
                        or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
                    )
                    if broken:
                        self._drop_connection()
                        if attempt == 0 and was_connected and not self._lost:
                            logger.warning(
                                "queue storage %s: connection lost (%s); reconnecting",
                                self.url,
                                f"no answer from the server in {self.call_timeout:g} s"
                                if hung
                                else str(exc.orig).strip().splitlines()[0]
                                if exc.orig
                                else exc,
                            )
                            continue
                    self._fail(exc, doing, hung=hung)
            raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _deadline(self, until: float) -> Any:
        """Watch one attempt of a call, to end by ``until`` (monotonic).
        The watchdog is woken only after a quiet spell: waking a thread per
        call cost more than the call's own round trip on a loaded machine."""
        watch = self._watch
        with watch:
            self._aborted = False
            self._call_until = until
            self._calls += 1
            if self._watch_idle or until < self._watch_wake:
                self._watch_idle = False
                if self._watchdog is None:
                    self._watchdog = threading.Thread(
                        target=self._watch_calls, name="snakemq storage watchdog", daemon=True
                    )
                    self._watchdog.start()
                watch.notify()
        try:
            yield
        finally:
            with watch:
                self._call_until = None

    def _watch_calls(self) -> None:
        """The watchdog thread: a call past its deadline has its socket shut
        down, so the thread blocked in it gets a broken connection.  While
        calls come, it looks every ``call_timeout`` at the one in flight (then
        sleeps until its exact deadline); after a whole ``call_timeout``
        without a call it sleeps until the next one."""
        watch = self._watch
        with watch:
            while not self._closed:
                if self._watch_idle:
                    watch.wait()
                    continue
                calls, until = self._calls, self._call_until
                if until is None:
                    self._watch_wake = time.monotonic() + self.call_timeout
                    watch.wait(self.call_timeout)
                    if self._calls == calls and self._call_until is None:
                        self._watch_idle = True
                    continue
                left = until - time.monotonic()
                if left > 0:
                    self._watch_wake = until
                    watch.wait(left)
                    continue
                self._call_until = None
                self._abort_call()

    def _abort_call(self) -> None:
        conn = self._conn
        try:
            driver = conn.connection.dbapi_connection if conn is not None else None
            fd = driver.pgconn.socket if driver is not None else -1
        except Exception:  # closed meanwhile, or not psycopg: nothing to abort
            return
        if fd < 0:
            return
        self._aborted = True
        # shutdown acts on the socket, not on the (duplicated) descriptor
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    # ---------------------------------------------------------------- schema

    def _check_schema(self, conn: Connection) -> None:
        sa, t = self._sa, self._t
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
        tables = set(sa.inspect(conn).get_table_names())
        if "snakemq_meta" not in tables:
            ours = {"snakemq_queue", "snakemq_seen"} & tables
            if ours:
                raise StorageError(
                    f"queue storage {self.url!r} has tables {', '.join(sorted(ours))} but no "
                    "snakemq_meta: they are not a snakemq schema; left untouched — use another "
                    "database or schema"
                )
            t.metadata.create_all(conn)
            conn.execute(
                sa.insert(t.meta),
                [
                    {"key": "application", "value": _APPLICATION},
                    {"key": "schema_version", "value": str(SCHEMA_VERSION_SQLA)},
                ],
            )
            logger.info("created queue storage schema in %s", self.url)
            return
        meta = {key: value for key, value in conn.execute(sa.select(t.meta.c.key, t.meta.c.value))}
        if meta.get("application") != _APPLICATION:
            raise StorageError(
                f"queue storage {self.url!r}: its snakemq_meta table is not snakemq's "
                f"(application {meta.get('application')!r}); left untouched — use another "
                "database or schema"
            )
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            version = -1
        if version > SCHEMA_VERSION_SQLA:
            raise StorageError(
                f"queue storage {self.url!r} has schema version {version}, written by a newer "
                f"snakemq; this version reads up to {SCHEMA_VERSION_SQLA}. Upgrade snakemq-proto "
                "(the database was left untouched)"
            )
        missing = {"snakemq_queue", "snakemq_seen"} - tables
        if version != SCHEMA_VERSION_SQLA or missing:
            raise StorageError(
                f"queue storage {self.url!r} is damaged (schema version {version}, missing "
                f"tables: {', '.join(sorted(missing)) or 'none'}); restore it from a backup"
            )

    def _migrate_16(self, conn: Connection, owner: str) -> None:
        """Move a snakeMQ 1.6 ``snakemq_items`` table into ``owner``'s queues."""
        sa, t = self._sa, self._t
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
        if "snakemq_items" not in set(sa.inspect(conn).get_table_names()):
            return
        legacy = t.legacy
        rows = []
        for row in conn.execute(sa.select(legacy).order_by(legacy.c.id_)):
            try:
                uuid = bytes.fromhex(row.uuid)
                message = Message(bytes(row.data), row.ttl, row.flags or 0, uuid)
                ident = check_ident(row.queue_name, "queue_name")
            except (TypeError, ValueError) as exc:
                raise StorageError(
                    f"queue storage {self.url!r}: snakeMQ 1.6 table snakemq_items has a row "
                    f"that is not a valid message (id_ {row.id_}: {exc}); nothing was migrated "
                    "— repair or delete that row"
                ) from exc
            rows.append(
                {
                    "owner": owner,
                    "ident": ident,
                    "uuid": message.uuid,
                    "data": message.data,
                    "ttl": message.ttl,
                    "flags": message.flags,
                }
            )
        if rows:
            conn.execute(sa.insert(t.queue), rows)
        conn.execute(sa.text("ALTER TABLE snakemq_items RENAME TO snakemq_items_16"))
        logger.warning(
            "queue storage %s: migrated %d message(s) of snakeMQ 1.6 (table snakemq_items, kept "
            "as snakemq_items_16) into the queues of %r",
            self.url,
            len(rows),
            owner,
        )

    # ----------------------------------------------------------------- lease

    def bind(self, ident: str) -> None:
        """Make ``ident`` the owner of this storage's rows and try to take its
        lease (see ``held``).  ``Messaging`` calls this with its identifier.

        Raises:
            ValueError: already bound to another ident.
            StorageError: the server cannot be used.
        """
        ident = check_ident(ident)
        with self._lock:
            if self._owner is not None:
                if self._owner != ident:
                    raise ValueError(
                        f"queue storage {self.url!r} belongs to ident {self._owner!r}, "
                        f"not {ident!r}; open one storage per peer"
                    )
                return
            self._owner = ident
        self.try_acquire()

    @property
    def ident(self) -> str | None:
        """The peer that owns this storage's rows (``None`` until bound)."""
        return self._owner

    @property
    def leased(self) -> bool:
        """True when this storage guards its ident with a lease (PostgreSQL)."""
        return self._lease

    @property
    def held(self) -> bool:
        """True when this process serves the ident (it holds the lease, or
        there is no lease)."""
        return self._owner is not None and (self._held or not self._lease)

    @property
    def lost(self) -> bool:
        """True once another process took the ident over while this one's
        connection to the server was broken: every call raises then."""
        return self._lost

    def try_acquire(self, wait: float = 0.0) -> bool:
        """Try once to take the ident's lease; return ``held``.  Once held,
        a 1.6 table is migrated into the owner's queues.

        Args:
            wait: seconds to wait on the server for the lease (at most half
                of ``call_timeout``): the server grants it the moment the
                holder's session ends, so a standby that keeps waiting takes
                over at once.  ``0`` asks without waiting.

        Raises:
            StorageError: the server cannot be used.
        """
        owner = self._owner
        if owner is None:
            raise StorageError(f"queue storage {self.url!r} is not bound to an ident yet")
        with self._lock:
            if self.held:
                return True

            def take(conn: Connection) -> bool:
                if self._lease and not self._try_lock(conn, wait):
                    return False
                self._held = True
                return True

            if not self._run("lock", take, lease=False):
                return False
            try:
                self._run("migrate", lambda conn: self._migrate_16(conn, owner))
            except BaseException:
                self.release()
                raise
            logger.info("queue storage %s: serving ident %r", self.url, owner)
            return True

    def check_lease(self) -> bool:
        """Confirm, with one round trip, that this process still serves the
        ident; return ``held``.  A broken connection is replaced and the lock
        taken again; if another process took it meanwhile, this returns
        False and ``lost`` is True (stop serving the ident).

        Raises:
            StorageError: the server cannot be reached: whether the lease is
                still held is unknown (a standby cannot take it either
                while the server is down).
        """
        if not self._lease or not self._held:
            return self.held
        try:  # one round trip (no BEGIN, COMMIT)
            self._run(
                "check the lease of",
                lambda conn: self._on_driver(conn, lambda cursor: cursor.execute("SELECT 1")),
            )
        except LeaseLostError:
            return False
        return True

    def wait_acquire(self, seconds: float) -> bool:
        """``try_acquire(wait=seconds)``: what a standby calls in a loop."""
        return self.try_acquire(wait=seconds)

    def _try_lock(self, conn: Connection, wait: float = 0.0) -> bool:
        # session lock, taken outside any transaction's lifetime: it survives
        # the commit and is released by the server when the session ends
        sa = self._sa
        key = {"k": lease_key(str(self._owner))}
        wait = min(wait, self.call_timeout / 2)
        if wait <= 0:
            return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
        try:
            with conn.begin_nested():  # a lock timeout rolls back only this savepoint
                conn.execute(
                    sa.text("SELECT set_config('lock_timeout', :t, true)"),
                    {"t": f"{max(1, round(wait * 1000))}ms"},
                )
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), key)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                return False
            raise
        return True

    def release(self) -> None:
        """Give the lease up (a standby can take over); idempotent."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            if self._lease and self._conn is not None:
                try:
                    with self._conn.begin():
                        self._conn.execute(
                            self._sa.text("SELECT pg_advisory_unlock(:k)"),
                            {"k": lease_key(str(self._owner))},
                        )
                except self._sa.exc.DBAPIError:
                    self._drop_connection()  # a dead session holds no lock

    # ------------------------------------------------------------------- API

    def load(self) -> StoredState:
        """Return the owner's stored queues (oldest first) and de-dup windows.

        Raises:
            StorageError: not the holder, or the server cannot be used.
        """
        sa, t = self._sa, self._t
        owner = self._owner_or_fail()
        q, s = t.queue.c, t.seen.c

        def read(conn: Connection) -> StoredState:
            queues: dict[str, list[Message]] = {}
            for ident, uuid, data, ttl, flags in conn.execute(
                sa.select(q.ident, q.uuid, q.data, q.ttl, q.flags)
                .where(q.owner == owner)
                .order_by(q.seq)
            ):
                # validated: a shared database may hold rows written by anyone
                queues.setdefault(ident, []).append(Message(bytes(data), ttl, flags, bytes(uuid)))
            seen: dict[str, list[bytes]] = {}
            for ident, uuid in conn.execute(
                sa.select(s.ident, s.uuid).where(s.owner == owner).order_by(s.ident, s.seq)
            ):
                seen.setdefault(ident, []).append(bytes(uuid))
            return StoredState(queues=queues, seen=seen)

        state = self._run("read", read)
        self._analyzed = max(self._analyzed, sum(map(len, state.queues.values())))
        return state

    def apply(self, batch: StorageBatch) -> None:
        """Apply ``batch`` in one transaction, committed when this returns.

        Raises:
            StorageError: not the holder, or the write failed (rolled back:
                nothing of the batch is kept; apply it again later).
        """
        owner = self._owner_or_fail()
        if not batch:
            return
        self._run("write", lambda conn: self._write(conn, owner, batch))
        if self.dialect == "postgresql" and batch.push:
            self._pushed += len(batch.push)
            if self._pushed >= max(ANALYZE_AFTER, self._analyzed):
                self._analyze()

    def _analyze(self) -> None:
        """Refresh the server's statistics of the queue table once the rows
        pushed since the last time may have doubled it: right after a bulk
        push the planner still sees the table as small and each delete of
        acknowledged rows scans it (236-379 us per row at 300k rows, 38 us
        once analysed), until autovacuum gets round to it.  Best effort: a
        role that does not own the table only gets a server warning."""
        self._analyzed += self._pushed
        self._pushed = 0
        try:
            self._run(
                "analyze",
                lambda conn: self._on_driver(
                    conn, lambda cur: cur.execute("ANALYZE snakemq_queue")
                ),
            )
        except StorageError as exc:  # the batch is committed; the next call will tell
            logger.warning("queue storage %s: ANALYZE failed (%s)", self.url, exc)

    def _write(self, conn: Connection, owner: str, batch: StorageBatch) -> None:
        st = self._statements()
        gone = set(batch.delete)
        push = [
            {
                "owner": owner,
                "ident": ident,
                "uuid": m.uuid,
                "data": m.data,
                "ttl": m.ttl,
                "flags": m.flags,
            }
            for ident, m in batch.push
            if m.uuid not in gone
        ]
        if self.dialect == "postgresql" and not batch.seen:
            self._write_pg(conn, owner, push, gone, batch)
            return
        if push:
            conn.execute(st.upsert, push)
        update = [
            {"o": owner, "u": uuid, "t": ttl} for uuid, ttl in batch.update_ttl if uuid not in gone
        ]
        if update:
            conn.execute(st.update_ttl, update)
        if batch.update_ttl_in:
            conn.execute(
                st.update_ttl_in,
                [{"o": owner, "i": i, "u": u, "t": ttl} for i, u, ttl in batch.update_ttl_in],
            )
        delete = list(dict.fromkeys(batch.delete))
        for start in range(0, len(delete), _IN_CHUNK):
            conn.execute(st.delete, {"o": owner, "us": delete[start : start + _IN_CHUNK]})
        if batch.delete_from:
            conn.execute(
                st.delete_from, [{"o": owner, "i": i, "u": u} for i, u in batch.delete_from]
            )
        if batch.seen:
            self._apply_seen(conn, owner, batch.seen, batch.seen_keep)

    def _write_pg(
        self,
        conn: Connection,
        owner: str,
        push: list[dict[str, Any]],
        gone: set[bytes],
        batch: StorageBatch,
    ) -> None:
        """A batch without de-dup rows, in one round trip to the server: one
        statement autocommitted (what a persistent ``send_message`` of the
        sync package costs), else the transaction in psycopg's pipeline mode
        (BEGIN, the statements and COMMIT sent together).  On the driver's
        own cursor: SQLAlchemy's execution cost as much as the round trip.
        The driver's errors are raised as SQLAlchemy's, as ``_run`` expects."""
        st = self._statements()
        work: list[tuple[str, list[dict[str, Any]]]] = []
        if push:
            work.append((st.upsert_sql, push))
        update = [
            {"o": owner, "u": uuid, "t": ttl} for uuid, ttl in batch.update_ttl if uuid not in gone
        ]
        if update:
            work.append((_PG_UPDATE_TTL, update))
        if batch.update_ttl_in:
            work.append(
                (
                    _PG_UPDATE_TTL_IN,
                    [{"o": owner, "i": i, "u": u, "t": ttl} for i, u, ttl in batch.update_ttl_in],
                )
            )
        if batch.delete:
            work.append((_PG_DELETE, [{"o": owner, "us": list(dict.fromkeys(batch.delete))}]))
        if batch.delete_from:
            work.append(
                (_PG_DELETE_FROM, [{"o": owner, "i": i, "u": u} for i, u in batch.delete_from])
            )
        if not work:
            return
        dbapi: Any = self._engine.dialect.loaded_dbapi
        one = len(work) == 1 and len(work[0][1]) == 1
        if not one and not dbapi.Pipeline.is_supported():  # libpq < 14
            for sql, rows in work:
                conn.exec_driver_sql(sql, rows if len(rows) > 1 else rows[0])
            return

        def send(cursor: Any) -> None:
            if one:
                cursor.execute(work[0][0], work[0][1][0])
                return
            # one Sync when the pipeline ends: the server answers it all at once
            with cursor.connection.pipeline():
                cursor.execute("BEGIN")
                for sql, rows in work:
                    cursor.executemany(sql, rows)
                cursor.execute("COMMIT")

        self._on_driver(conn, send)

    def _on_driver(self, conn: Connection, send: Callable[[Any], None]) -> None:
        """``send(cursor)`` on the driver's own connection in autocommit
        mode (else psycopg sends BEGIN first and waits for its answer): the
        connection is idle here, as every call commits.  The driver's errors
        are raised as SQLAlchemy's, as ``_run`` expects."""
        raw: Any = conn.connection.dbapi_connection
        dbapi: Any = self._engine.dialect.loaded_dbapi
        raw.autocommit = True
        try:
            send(raw.cursor())
        except dbapi.Error as exc:
            with contextlib.suppress(Exception):  # a failed statement left a block aborted
                raw.rollback()
            raise self._sa.exc.DBAPIError.instance(None, None, exc, dbapi.Error) from exc
        finally:
            with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                raw.autocommit = False

    def _statements(self) -> _Statements:
        # built once: SQLAlchemy then reuses their compiled form (building an
        # upsert per batch cost more CPU than the round trip to the server)
        st = self._st
        if st is None:
            st = self._st = _Statements(self._sa, self._t, self._engine.dialect)
        return st

    def _apply_seen(
        self, conn: Connection, owner: str, seen: Iterable[tuple[str, bytes]], keep: int
    ) -> None:
        st = self._statements()
        by_ident: dict[str, list[bytes]] = {}
        for ident, uuid in seen:
            by_ident.setdefault(ident, []).append(uuid)
        for ident, uuids in by_ident.items():
            mine = {"o": owner, "i": ident}
            low, high = conn.execute(st.seen_bounds, mine).one()
            if low is None:
                low = high = 0
            else:
                high += 1
            position: dict[bytes, int] = {}
            distinct = list(dict.fromkeys(uuids))
            for start in range(0, len(distinct), _IN_CHUNK):
                chunk = distinct[start : start + _IN_CHUNK]
                for uuid, at in conn.execute(st.seen_find, {**mine, "us": chunk}):
                    position[bytes(uuid)] = at
            appended, low = seen_window_appends(uuids, position, low, high, keep)
            rows = [
                {"owner": owner, "ident": ident, "uuid": uuid, "seq": at}
                for uuid, at in appended.items()
                if at >= low
            ]
            # stale copies first: a re-appended uuid gets a new seq
            conn.execute(st.seen_prune, {**mine, "low": low})
            if rows:
                conn.execute(st.seen_forget, {**mine, "us": [r["uuid"] for r in rows]})
                conn.execute(st.seen_insert, rows)

    def _owner_or_fail(self) -> str:
        owner = self._owner
        if owner is None:
            raise StorageError(
                f"queue storage {self.url!r} is not bound to an ident: pass ident=... or give "
                "it to Messaging, which binds it"
            )
        return owner

    def close(self) -> None:
        """Release the lease and close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self.release()
            self._closed = True
            with self._watch:
                self._watch.notify()
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):  # a broken connection
                    conn.close()
            engine = getattr(self, "_engine", None)
            if engine is not None:
                engine.dispose()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def __enter__(self) -> SqlAlchemyQueuesStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("holder" if self.held else "standby")
        return f"<SqlAlchemyQueuesStorage {self.url!r} ident={self._owner!r} {state}>"


def storage_at(location: str | os.PathLike[str]) -> QueuesStorage:
    """Open the storage a command line or configuration names: a database
    URL (``postgresql://...``) gives ``SqlAlchemyQueuesStorage``, anything
    else is the path of an SQLite file (``SqliteQueuesStorage``).

    Raises:
        StorageError: the storage cannot be opened.
    """
    text = os.fspath(location)
    if "://" in text:
        return SqlAlchemyQueuesStorage(text)
    return SqliteQueuesStorage(text)
