"""SqlAlchemyQueuesStorage against a real PostgreSQL server (started by the tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from snakemq_proto import (
    Lease,
    LeaseLostError,
    MemoryQueuesStorage,
    Message,
    QueuesStorage,
    SqlAlchemyQueuesStorage,
    StorageBatch,
    StorageError,
    open_storage,
    standby,
    take_over_attempt,
)
from snakemq_proto._sqla import (
    ANALYZE_AFTER,
    CALL_TIMEOUT,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
)
from snakemq_proto.testing import PASSWORD, TestPostgres
from test_sqlite import BATCHES


def msg(i: int, ttl: float | None = None) -> Message:
    return Message(b"payload %d" % i, ttl=ttl, flags=1, uuid=i.to_bytes(16, "big"))


def sql(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement with psycopg directly (not through the storage)."""
    conninfo = url.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute(statement, args)  # type: ignore[arg-type,unused-ignore]
        return cur.fetchall() if cur.description else []


def test_is_a_queues_storage_and_a_lease(pg_url: str) -> None:
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        assert isinstance(storage, QueuesStorage)
        assert isinstance(storage, Lease)
        assert storage.held and storage.leased
        assert "***" in repr(storage) and PASSWORD not in repr(storage)


def test_round_trip_and_reopen(pg_url: str) -> None:
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        storage.apply(
            StorageBatch(
                push=[("bob", msg(1)), ("bob", msg(2, ttl=5.0)), ("carol", msg(3))],
                seen=[("bob", b"s" * 16)],
                seen_keep=10,
            )
        )
        storage.apply(StorageBatch(update_ttl=[(msg(2).uuid, 2.5)], delete=[msg(3).uuid]))
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        state = storage.load()
    assert state.queues == {"bob": [msg(1), msg(2, ttl=2.5)]}
    assert state.seen == {"bob": [b"s" * 16]}


def test_two_identities_share_one_database(pg_url: str) -> None:
    alice = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    bob = SqlAlchemyQueuesStorage(pg_url, ident="bob")
    try:
        # the same uuid in both: each peer's rows are its own
        alice.apply(StorageBatch(push=[("carol", msg(1))], seen=[("carol", b"a" * 16)]))
        bob.apply(StorageBatch(push=[("carol", msg(1)), ("dave", msg(2))]))
        bob.apply(StorageBatch(update_ttl=[(msg(1).uuid, 1.0)]))
        alice.apply(StorageBatch(delete=[msg(1).uuid, msg(2).uuid]))
        assert alice.load().queues == {}
        assert alice.load().seen == {"carol": [b"a" * 16]}
        assert bob.load().queues == {"carol": [msg(1, ttl=1.0)], "dave": [msg(2)]}
        assert bob.load().seen == {}
    finally:
        alice.close()
        bob.close()


def test_one_holder_per_ident_and_the_standby_takes_over(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice", lease_poll=0.2)
    holder.apply(StorageBatch(push=[("bob", msg(1))]))
    second = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    try:
        assert standby(holder) is None
        assert standby(second) is second and not second.held
        assert not second.try_acquire()
        with pytest.raises(StorageError, match="standby"):
            second.load()
        with pytest.raises(StorageError, match="standby"):
            second.apply(StorageBatch(push=[("bob", msg(2))]))
        holder.close()  # releases the lease, as the server does when the holder dies
        assert second.try_acquire() and second.held
        assert second.load().queues == {"bob": [msg(1)]}
    finally:
        holder.close()
        second.close()


def test_killed_holder_session_releases_the_lease(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    second = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    try:
        assert not second.try_acquire()
        # the holder's process dies: the server ends its session
        sql(
            pg_url,
            "SELECT pg_terminate_backend(l.pid, 10000) FROM pg_locks l JOIN pg_database d "
            "ON d.oid = l.database WHERE l.locktype = 'advisory' "
            "AND d.datname = current_database() AND l.pid <> pg_backend_pid()",
        )
        assert second.try_acquire()
        # the old holder notices on its next call and refuses to go on
        with pytest.raises(StorageError, match="taken over"):
            holder.apply(StorageBatch(push=[("bob", msg(1))]))
        assert second.load().queues == {}
    finally:
        holder.close()
        second.close()


def test_server_restart_reconnects_and_keeps_what_was_committed(
    postgres: TestPostgres, pg_url: str
) -> None:
    storage = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    try:
        storage.apply(StorageBatch(push=[("bob", msg(1))]))
        postgres.stop()
        with pytest.raises(StorageError, match=r"cannot write .*\*\*\*@127\.0\.0\.1"):
            storage.apply(StorageBatch(push=[("bob", msg(2))]))
        postgres.start()
        storage.apply(StorageBatch(push=[("bob", msg(2))]))  # retried by the caller
        postgres.restart()
        storage.apply(StorageBatch(push=[("bob", msg(3))]))  # reconnects by itself
        assert storage.held
        assert storage.load().queues == {"bob": [msg(1), msg(2), msg(3)]}
        other = SqlAlchemyQueuesStorage(pg_url, ident="alice")
        assert not other.held  # the lease was taken again after the restart
        other.close()
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("make_url", "words"),
    [
        (lambda pg: pg.url(password="wrong"), "refused the user name or password"),
        (lambda pg: pg.url(user="nobody_here"), "refused the user name or password"),
        (lambda pg: pg.url(database="missing_db"), "database does not exist"),
        (
            lambda pg: f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db",
            "cannot be reached",
        ),
        (lambda pg: "postgresql://u:secret@no-such-host.invalid/db", "cannot be reached"),
        (lambda pg: "no url:secret@", "not a database URL"),
        (lambda pg: "mysql://u:secret@127.0.0.1/db", "not supported"),
        (lambda pg: "postgresql+nodriver://u:secret@127.0.0.1/db", "cannot use this URL"),
    ],
)
def test_bad_urls_and_credentials_are_clear_errors(
    postgres: TestPostgres, make_url: object, words: str
) -> None:
    url = make_url(postgres)  # type: ignore[operator]
    with pytest.raises(StorageError, match=words) as info:
        SqlAlchemyQueuesStorage(url, connect_timeout=2)
    text = str(info.value)
    assert "secret" not in text and PASSWORD not in text
    assert "***" in text


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_newer_schema_is_refused_and_left_alone(pg_url: str) -> None:
    SqlAlchemyQueuesStorage(pg_url, ident="alice").close()
    sql(pg_url, "UPDATE snakemq_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="schema version 99, written by a newer snakemq"):
        SqlAlchemyQueuesStorage(pg_url, ident="alice")
    assert sql(pg_url, "SELECT value FROM snakemq_meta WHERE key = 'schema_version'") == [("99",)]


def test_foreign_schema_is_refused_and_left_alone(pg_url: str) -> None:
    sql(pg_url, "CREATE TABLE snakemq_meta (key text primary key, value text)")
    sql(pg_url, "INSERT INTO snakemq_meta VALUES ('application', 'someone-else')")
    with pytest.raises(StorageError, match="not snakemq's"):
        SqlAlchemyQueuesStorage(pg_url)
    sql(pg_url, "DROP TABLE snakemq_meta")
    sql(pg_url, "CREATE TABLE snakemq_queue (x int)")
    with pytest.raises(StorageError, match="not a snakemq schema"):
        SqlAlchemyQueuesStorage(pg_url)


def test_other_tables_of_a_shared_database_are_fine(pg_url: str) -> None:
    sql(pg_url, "CREATE TABLE invoices (id int)")
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        assert storage.load().queues == {}


# snakeMQ 1.6's SqlAlchemyQueuesStorage: `meta.create_all` of this table, and
# one row per message (uuid in hex); it cannot run on SQLAlchemy 2 (it calls
# select([...]) and never commits under 2.0's autobegin), so its exact DDL and
# rows are written here.
SCHEMA_16 = """
CREATE TABLE snakemq_items (
    id_ SERIAL NOT NULL, queue_name VARCHAR(50), uuid VARCHAR(32), data BYTEA,
    flags INTEGER, ttl FLOAT, PRIMARY KEY (id_), UNIQUE (uuid)
)
"""


def test_database_of_snakemq_16_is_migrated_never_lost(pg_url: str) -> None:
    sql(pg_url, SCHEMA_16)
    for i, queue in [(1, "bob"), (2, "carol"), (3, "bob")]:
        m = msg(i, ttl=30.0 if i == 2 else None)
        sql(
            pg_url,
            "INSERT INTO snakemq_items (queue_name, uuid, data, flags, ttl) "
            "VALUES (%s, %s, %s, %s, %s)",
            queue,
            m.uuid.hex(),
            m.data,
            m.flags,
            m.ttl,
        )
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        assert storage.load().queues == {"bob": [msg(1), msg(3)], "carol": [msg(2, ttl=30.0)]}
    # the 1.6 table is kept, renamed; a second peer gets none of alice's messages
    assert sql(pg_url, "SELECT count(*) FROM snakemq_items_16") == [(3,)]
    with SqlAlchemyQueuesStorage(pg_url, ident="zed") as other:
        assert other.load().queues == {}


def test_database_of_snakemq_16_with_a_bad_row_is_refused(pg_url: str) -> None:
    sql(pg_url, SCHEMA_16)
    sql(
        pg_url,
        "INSERT INTO snakemq_items (queue_name, uuid, data, flags) VALUES ('b', 'zz', '', 0)",
    )
    with pytest.raises(StorageError, match=r"not a valid message.*nothing was migrated"):
        SqlAlchemyQueuesStorage(pg_url, ident="alice")
    assert sql(pg_url, "SELECT count(*) FROM snakemq_items") == [(1,)]


def test_unbound_storage_and_open_storage(pg_url: str) -> None:
    storage = SqlAlchemyQueuesStorage(pg_url)
    try:
        with pytest.raises(StorageError, match="not bound to an ident"):
            storage.load()
        assert open_storage(storage, "alice") is storage
        assert storage.ident == "alice" and storage.held
        with pytest.raises(ValueError, match="belongs to ident 'alice'"):
            storage.bind("bob")
    finally:
        storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.load()


def test_use_from_other_threads(pg_url: str) -> None:
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:

        def push(k: int) -> None:
            for i in range(20):
                storage.apply(StorageBatch(push=[("bob", msg(k * 100 + i))]))

        threads = [threading.Thread(target=push, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(storage.load().queues["bob"]) == 80


class SameAsMemory(RuleBasedStateMachine):
    """Random batches applied to both storages leave both in the same state."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryQueuesStorage()
        self.pg = SqlAlchemyQueuesStorage(self.url, ident="me")
        self.pg.apply(StorageBatch(delete=[bytes([i]) * 16 for i in range(8)]))
        sql(self.url, "DELETE FROM snakemq_seen")

    @rule(batch=BATCHES)
    def apply(self, batch: StorageBatch) -> None:
        self.memory.apply(batch)
        self.pg.apply(batch)

    @rule()
    def reopen(self) -> None:
        self.pg.close()
        self.pg = SqlAlchemyQueuesStorage(self.url, ident="me")

    @invariant()
    def same_state(self) -> None:
        assert self.pg.load() == self.memory.load()

    def teardown(self) -> None:
        self.pg.close()


def test_same_semantics_as_memory_storage(pg_url: str) -> None:
    SameAsMemory.url = pg_url
    SameAsMemory.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    SameAsMemory.TestCase().runTest()


def _holder_backend(url: str) -> int:
    """The server process of the session that holds an advisory lock."""
    rows = sql(
        url,
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND d.datname = current_database() "
        "AND l.pid <> pg_backend_pid()",
    )
    assert len(rows) == 1, rows
    return int(str(rows[0][0]))


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The server process ``pid`` stops answering (SIGSTOP: no reset, no
    close), and always resumes afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _bounded(call: Callable[[], object], seconds: float) -> BaseException | None:
    """Run ``call`` in a thread; fail if it is still blocked after ``seconds``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call still waits for the server after {seconds} s"
    return outcome[0]


def client_waits(storage: SqlAlchemyQueuesStorage, call: Callable[[], object], trace: str) -> int:
    """How many times ``call`` made the client wait for the server: the
    messages after which the server answers and the client waits (Sync of
    the extended protocol, Query of the simple one), from libpq's trace."""
    storage.load()  # connected
    assert storage._conn is not None
    pgconn = storage._conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    with open(trace, "w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            call()
        finally:
            pgconn.untrace()
    sent = [line.split("\t") for line in Path(trace).read_text().splitlines()]
    return sum(1 for d in sent if d[0] == "F" and d[2].split(" ")[0] in ("Sync", "Query"))


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(StorageBatch(push=[("bob", msg(10))]), id="a persistent send"),
        pytest.param(StorageBatch(delete=[msg(1).uuid, msg(2).uuid]), id="acknowledged rows"),
        pytest.param(
            StorageBatch(
                push=[("bob", msg(10)), ("carol", msg(11))],
                delete=[msg(1).uuid],
                update_ttl=[(msg(2).uuid, 5.0)],
                update_ttl_in=[("bob", msg(3).uuid, 6.0)],
                delete_from=[("bob", msg(4).uuid)],
            ),
            id="a loop pass",
        ),
    ],
)
def test_a_write_is_one_round_trip_to_the_server(
    pg_url: str, batch: StorageBatch, tmp_path: Path
) -> None:
    # the sender's durable send_message and its loop pass each wait for
    # one answer: not BEGIN, the statements and COMMIT one after another
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        storage.apply(StorageBatch(push=[("bob", msg(i)) for i in range(1, 5)]))
        trace = str(tmp_path / "trace")
        assert client_waits(storage, lambda: storage.apply(batch), trace) == 1
        assert client_waits(storage, storage.check_lease, trace) == 1
        expected = MemoryQueuesStorage()
        expected.apply(StorageBatch(push=[("bob", msg(i)) for i in range(1, 5)]))
        expected.apply(batch)
        assert storage.load() == expected.load()


def test_a_bulk_push_refreshes_the_planner_statistics(pg_url: str) -> None:
    # without them the planner takes the fresh table as small and every
    # delete of acknowledged rows scans it (159 against 31 us per row at 200k)
    def rows_known() -> float:
        (known,) = sql(pg_url, "SELECT reltuples FROM pg_class WHERE relname = 'snakemq_queue'")
        return float(known[0])  # type: ignore[arg-type]

    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        storage.load()
        storage.apply(StorageBatch(push=[("bob", msg(i)) for i in range(ANALYZE_AFTER - 1)]))
        assert rows_known() < ANALYZE_AFTER
        storage.apply(StorageBatch(push=[("bob", msg(ANALYZE_AFTER))]))
        assert rows_known() == ANALYZE_AFTER


def test_a_failed_write_keeps_nothing_of_its_batch(pg_url: str) -> None:
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        storage.apply(StorageBatch(push=[("bob", msg(1)), ("bob", msg(2))]))
        before = storage.load()
        too_long = "x" * 51  # the server refuses it, after the other statements ran
        with pytest.raises(StorageError, match="write"):
            storage.apply(
                StorageBatch(push=[("bob", msg(3)), (too_long, msg(4))], delete=[msg(1).uuid])
            )
        assert storage.load() == before
        storage.apply(StorageBatch(delete=[msg(1).uuid]))  # and the storage carries on
        assert [m.uuid for m in storage.load().queues["bob"]] == [msg(2).uuid]


def test_call_to_a_hung_server_ends_in_bounded_time(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice", call_timeout=1.0)
    standby_ = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    try:
        holder.apply(StorageBatch(push=[("bob", msg(1))]))
        with _stopped(_holder_backend(pg_url)):
            started = time.monotonic()
            error = _bounded(lambda: holder.apply(StorageBatch(push=[("bob", msg(2))])), 10.0)
            took = time.monotonic() - started
            # the hung session still holds the lock: the new one cannot take it back
            assert isinstance(error, LeaseLostError), error
            assert holder.lost
            assert 1.0 <= took < 5.0
            assert not standby_.try_acquire()  # the stopped session holds it yet
        # resumed, the server ends the session whose socket was shut down
        deadline = time.monotonic() + 10
        while not standby_.try_acquire():
            assert time.monotonic() < deadline, "the hung session's lease was never released"
            threading.Event().wait(0.05)
        # the unanswered write may have been committed once the server went on
        # (as any commit whose answer was lost): a retry of the same message
        # is idempotent, and the receiver drops a copy by its uuid
        assert standby_.load().queues["bob"] in ([msg(1)], [msg(1), msg(2)])
    finally:
        holder.close()
        standby_.close()


def test_a_call_with_its_retry_ends_within_call_and_connect_timeout(pg_url: str) -> None:
    # the server answers, but the write waits on a lock another session
    # holds: the first attempt is cut after call_timeout, the retry on a new
    # connection gets only what is left of call_timeout + connect_timeout
    # (it had a whole call_timeout more: 2 x call_timeout in all)
    with (
        SqlAlchemyQueuesStorage(
            pg_url, ident="alice", lease=False, call_timeout=3.0, connect_timeout=1.0
        ) as storage,
        psycopg.connect(pg_url) as other,
    ):
        other.execute("LOCK TABLE snakemq_queue IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StorageError, match="call_timeout"):
            storage.apply(StorageBatch(push=[("bob", msg(1))]))
        took = time.monotonic() - started
        other.rollback()
        assert 3.0 <= took < 5.5, took
        storage.apply(StorageBatch(push=[("bob", msg(1))]))  # the lock is gone: it works
        assert [m.uuid for m in storage.load().queues["bob"]] == [msg(1).uuid]


def test_lease_check_notices_a_hung_session_and_a_lost_lease(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice", call_timeout=1.0)
    try:
        assert holder.check_lease()
        with _stopped(_holder_backend(pg_url)):
            error = _bounded(lambda: _expect(holder.check_lease, False), 10.0)
            assert error is None
            assert holder.lost
        with pytest.raises(LeaseLostError, match="taken over"):
            holder.load()
    finally:
        holder.close()


def test_lease_check_reconnects_and_keeps_the_lease(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    try:
        sql(pg_url, "SELECT pg_terminate_backend(%s)", _holder_backend(pg_url))
        assert holder.check_lease()  # nobody took it meanwhile: taken again
        assert not holder.lost
        assert _holder_backend(pg_url) > 0
        with SqlAlchemyQueuesStorage(pg_url, ident="alice") as other:
            assert not other.held
    finally:
        holder.close()


def _expect(call: Callable[[], object], value: object) -> None:
    assert call() == value


def _settings(storage: SqlAlchemyQueuesStorage) -> tuple[dict[str, str], str]:
    """libpq's parameters of a connection the storage makes, and the server's
    tcp_keepalives_idle for that session."""
    with storage._engine.connect() as conn:
        client = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        server = conn.exec_driver_sql("SHOW tcp_keepalives_idle").scalar()
    return client, str(server)


def test_keepalives_have_defaults_that_connect_args_override(pg_url: str) -> None:
    with SqlAlchemyQueuesStorage(pg_url, ident="alice") as storage:
        client, server = _settings(storage)
        assert client["keepalives"] == "1"
        assert client["keepalives_idle"] == str(KEEPALIVE_IDLE)
        assert client["keepalives_interval"] == str(KEEPALIVE_INTERVAL)
        assert client["keepalives_count"] == str(KEEPALIVE_COUNT)
        assert server == str(KEEPALIVE_IDLE)
        assert storage.call_timeout == CALL_TIMEOUT
    with SqlAlchemyQueuesStorage(
        pg_url, ident="alice", connect_args={"keepalives_idle": 30, "options": ""}
    ) as storage:
        client, server = _settings(storage)
        assert client["keepalives_idle"] == "30"
        assert server != str(KEEPALIVE_IDLE)  # the system's default: not set for the session


def test_waiting_standby_takes_over_the_moment_the_holder_lets_go(pg_url: str) -> None:
    holder = SqlAlchemyQueuesStorage(pg_url, ident="alice")
    waiting = SqlAlchemyQueuesStorage(pg_url, ident="alice", lease_poll=5.0)
    try:
        started = time.monotonic()
        assert not waiting.try_acquire(wait=0.3)  # the server said no after 0.3 s
        assert time.monotonic() - started >= 0.3
        letting_go = threading.Timer(0.2, holder.close)
        letting_go.start()
        started = time.monotonic()
        assert take_over_attempt(waiting)  # waits up to lease_poll (5 s) on the server
        assert time.monotonic() - started < 2.0
        letting_go.join()
        assert waiting.held and waiting.load().queues == {}
    finally:
        holder.close()
        waiting.close()
