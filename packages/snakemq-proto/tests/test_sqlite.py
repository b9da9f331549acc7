"""SqliteQueuesStorage on real files: persistence, semantics, crash safety, errors."""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from snakemq_proto import (
    FLAG_PERSISTENT,
    MAX_TTL,
    MemoryQueuesStorage,
    Message,
    QueuesStorage,
    SqliteQueuesStorage,
    StorageBatch,
    StorageError,
    StoredState,
)
from snakemq_proto._sqlite import APPLICATION_ID, SCHEMA_VERSION
from snakemq_proto.testing import remount_read_only, small_fs

WRITER = pathlib.Path(__file__).with_name("sqlite_writer.py")
WAIT = 60.0  # seconds to wait for a helper process's line before failing


def message(i: int) -> Message:
    """Message ``i`` as sqlite_writer.py builds it."""
    return Message(
        b"payload %d " % i * (1 + i % 5),
        ttl=None if i % 3 == 0 else float(i) + 0.5,
        flags=FLAG_PERSISTENT,
        uuid=i.to_bytes(16, "big"),
    )


def ident(i: int) -> str:
    return f"peer{i % 3}"


def expected_queues(count: int) -> dict[str, list[Message]]:
    queues: dict[str, list[Message]] = {}
    for i in range(count):
        queues.setdefault(ident(i), []).append(message(i))
    return queues


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "queues.sqlite"


@pytest.fixture
def storage(db: pathlib.Path) -> Iterator[SqliteQueuesStorage]:
    s = SqliteQueuesStorage(db)
    yield s
    s.close()


# ------------------------------------------------------------ helper processes


class Helper:
    """A sqlite_writer.py process whose stdout is read line by line, with a timeout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""

    def readline(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + WAIT
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"helper {self.proc.args!r} printed nothing for {WAIT} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"helper exited ({self.proc.wait()}) before printing a line")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def helpers() -> Iterator[list[Helper]]:
    started: list[Helper] = []
    yield started
    for helper in started:
        helper.kill()


# ---------------------------------------------------------------- persistence


def test_is_a_queues_storage(storage: SqliteQueuesStorage) -> None:
    assert isinstance(storage, QueuesStorage)
    assert storage.load() == StoredState(queues={}, seen={})


def test_reopen_returns_same_queues_and_seen_window(db: pathlib.Path) -> None:
    with SqliteQueuesStorage(str(db)) as s:
        s.apply(StorageBatch(push=[(ident(i), message(i)) for i in range(30)]))
        s.apply(
            StorageBatch(
                push=[("peer0", Message(b"", ttl=None, uuid=b"e" * 16))],
                update_ttl=[(message(4).uuid, 1.25), (message(6).uuid, None)],
                delete=[message(1).uuid, message(9).uuid],
                seen=[("alice", bytes([i]) * 16) for i in range(5)] + [("bob", b"b" * 16)],
                seen_keep=3,
            )
        )
        before = s.load()
    expected = expected_queues(30)
    expected["peer1"].remove(message(1))
    expected["peer0"].remove(message(9))
    expected["peer1"][expected["peer1"].index(message(4))] = message(4).with_ttl(1.25)
    expected["peer0"][expected["peer0"].index(message(6))] = message(6).with_ttl(None)
    expected["peer0"].append(Message(b"", ttl=None, uuid=b"e" * 16))
    assert before.queues == expected
    assert before.seen == {"alice": [bytes([i]) * 16 for i in (2, 3, 4)], "bob": [b"b" * 16]}
    with SqliteQueuesStorage(db) as s:
        after = s.load()
    assert after == before
    assert all(isinstance(m.ttl, float | None) for q in after.queues.values() for m in q)


def test_file_is_wal_and_carries_schema_version(db: pathlib.Path) -> None:
    SqliteQueuesStorage(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        meta = dict(conn.execute("SELECT key, value FROM snakemq_meta"))
        assert meta == {"application": "snakemq", "schema_version": str(SCHEMA_VERSION)}
    finally:
        conn.close()


def test_empty_existing_file_becomes_a_storage(db: pathlib.Path) -> None:
    db.write_bytes(b"")
    with SqliteQueuesStorage(db) as s:
        s.apply(StorageBatch(push=[("bob", message(1))]))
    with SqliteQueuesStorage(db) as s:
        assert s.load().queues == {"bob": [message(1)]}


def test_synchronous_full_is_accepted(db: pathlib.Path) -> None:
    with SqliteQueuesStorage(db, synchronous="full") as s:
        assert s.synchronous == "FULL"
        assert s._conn is not None
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        s.apply(StorageBatch(push=[("bob", message(3))]))
    with SqliteQueuesStorage(db) as s:
        assert s._conn is not None
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s.load().queues == {"bob": [message(3)]}


def test_push_and_delete_in_one_batch_stores_nothing_but_deletes_old_copy(
    storage: SqliteQueuesStorage,
) -> None:
    storage.apply(StorageBatch(push=[("bob", message(1))]))
    storage.apply(
        StorageBatch(
            push=[("bob", message(2)), ("alice", message(1)), ("bob", message(3))],
            update_ttl=[(message(2).uuid, 9.0)],
            delete=[message(1).uuid, message(2).uuid],
        )
    )
    assert storage.load().queues == {"bob": [message(3)]}


def test_repush_keeps_position_and_replaces_message(storage: SqliteQueuesStorage) -> None:
    storage.apply(StorageBatch(push=[("bob", message(i)) for i in range(3)]))
    changed = Message(b"new", ttl=2.0, uuid=message(0).uuid)
    storage.apply(StorageBatch(push=[("bob", changed)]))
    assert storage.load().queues == {"bob": [changed, message(1), message(2)]}


def test_failed_batch_is_rolled_back_and_storage_stays_usable(
    storage: SqliteQueuesStorage,
) -> None:
    storage.apply(StorageBatch(push=[("bob", message(0))]))
    bad = Message._trusted(b"x", None, 0, b"short")  # 5-byte uuid: refused by the schema
    with pytest.raises(StorageError, match=r"queues\.sqlite"):
        storage.apply(
            StorageBatch(
                push=[("bob", message(1)), ("bob", bad)],
                delete=[message(0).uuid],
                seen=[("bob", b"s" * 16)],
            )
        )
    assert storage.load() == StoredState(queues={"bob": [message(0)]}, seen={})
    storage.apply(StorageBatch(push=[("bob", message(2))]))
    assert storage.load().queues == {"bob": [message(0), message(2)]}


def test_large_storage_loads_in_order(db: pathlib.Path) -> None:
    count = 100_000
    with SqliteQueuesStorage(db) as s:
        for start in range(0, count, 10_000):
            s.apply(
                StorageBatch(push=[(ident(i), message(i)) for i in range(start, start + 10_000)])
            )
    with SqliteQueuesStorage(db) as s:
        loaded = s.load()
    assert loaded.queues == expected_queues(count)


def test_seen_window_prunes_oldest_per_ident(storage: SqliteQueuesStorage) -> None:
    def u(i: int) -> bytes:
        return i.to_bytes(16, "big")

    storage.apply(StorageBatch(seen=[("a", u(i)) for i in range(10)], seen_keep=4))
    storage.apply(StorageBatch(seen=[("b", u(1)), ("a", u(8)), ("a", u(3))], seen_keep=4))
    # u(8) was in the window (no move); u(3) had been pruned (appended again)
    assert storage.load().seen == {"a": [u(7), u(8), u(9), u(3)], "b": [u(1)]}
    storage.apply(StorageBatch(seen=[("a", u(20))], seen_keep=0))  # 0: no pruning
    assert storage.load().seen["a"] == [u(7), u(8), u(9), u(3), u(20)]
    storage.apply(StorageBatch(seen=[("a", u(21))], seen_keep=2))
    assert storage.load().seen["a"] == [u(20), u(21)]


# ------------------------------------------------ same semantics as the memory storage

IDENTS = st.sampled_from(["alice", "bob", "carol"])
UUIDS = st.sampled_from([bytes([i]) * 16 for i in range(8)])
TTLS = st.none() | st.floats(min_value=0, max_value=MAX_TTL) | st.integers(0, 1000).map(float)
MESSAGES = st.builds(
    Message,
    data=st.binary(max_size=8),
    ttl=TTLS,
    flags=st.integers(0, 2**32 - 1),
    uuid=UUIDS,
)
BATCHES = st.builds(
    StorageBatch,
    push=st.lists(st.tuples(IDENTS, MESSAGES), max_size=8),
    update_ttl=st.lists(st.tuples(UUIDS, TTLS), max_size=4),
    delete=st.lists(UUIDS, max_size=4),
    seen=st.lists(st.tuples(IDENTS, UUIDS), max_size=10),
    seen_keep=st.integers(0, 5),
    update_ttl_in=st.lists(st.tuples(IDENTS, UUIDS, TTLS), max_size=4),
    delete_from=st.lists(st.tuples(IDENTS, UUIDS), max_size=4),
)


class _BothStorages(RuleBasedStateMachine):
    """Random batches applied to a memory and an SQLite storage."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="snakemq-test-")
        self.path = os.path.join(self.dir, "queues.sqlite")
        self.memory = MemoryQueuesStorage()
        self.sqlite = SqliteQueuesStorage(self.path)

    @rule(batch=BATCHES)
    def apply(self, batch: StorageBatch) -> None:
        self.memory.apply(batch)
        self.sqlite.apply(batch)

    @rule()
    def reopen(self) -> None:
        self.sqlite.close()
        self.sqlite = SqliteQueuesStorage(self.path)

    def teardown(self) -> None:
        try:
            self.sqlite.close()
            with SqliteQueuesStorage(self.path) as reopened:
                assert reopened.load() == self.memory.load()
        finally:
            shutil.rmtree(self.dir)


class SameAsMemory(_BothStorages):
    """Random batches applied to both storages leave both in the same state."""

    @invariant()
    def same_state(self) -> None:
        assert self.sqlite.load() == self.memory.load()


SameAsMemory.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_same_semantics_as_memory_storage = SameAsMemory.TestCase


class SameAsMemoryUnread(_BothStorages):
    """The same, but the SQLite storage is not read back after every batch:
    several batches in a row find their rows through the storage's own
    ``uuid -> seq`` map (kept since the last load or open), not a fresh one."""

    @rule()
    def same_state(self) -> None:
        assert self.sqlite.load() == self.memory.load()


SameAsMemoryUnread.TestCase.settings = SameAsMemory.TestCase.settings
test_same_semantics_as_memory_storage_without_reads = SameAsMemoryUnread.TestCase


# ------------------------------------------------------------------ crash safety


@pytest.mark.parametrize("count", [1, 5000])
def test_sigkill_right_after_apply_loses_nothing(
    db: pathlib.Path, helpers: list[Helper], count: int
) -> None:
    writer = Helper("once", str(db), str(count))
    helpers.append(writer)
    assert writer.readline() == "stored"
    writer.kill()
    assert writer.proc.returncode == -signal.SIGKILL
    with SqliteQueuesStorage(db) as s:
        assert s.load().queues == expected_queues(count)


def test_sigkill_while_writing_keeps_every_reported_batch_whole(
    db: pathlib.Path, helpers: list[Helper]
) -> None:
    size = 250
    writer = Helper("loop", str(db), str(size))
    helpers.append(writer)
    reported = 0
    while reported < 40 * size:
        line = writer.readline()
        assert line.startswith("stored ")
        reported = int(line.split()[1])
    writer.kill()  # most likely in the middle of a later batch
    with SqliteQueuesStorage(db) as s:
        queues = s.load().queues
    stored = sum(len(q) for q in queues.values())
    assert stored >= reported
    assert stored % size == 0  # no half batch
    assert queues == expected_queues(stored)


# ------------------------------------------------------------------------ errors


def test_corrupt_file_is_refused_and_left_alone(db: pathlib.Path) -> None:
    garbage = b"this is not a database\n" + bytes(range(256)) * 16
    db.write_bytes(garbage)
    with pytest.raises(StorageError, match=r"queues\.sqlite.*corrupt.*backup") as info:
        SqliteQueuesStorage(db)
    assert "move it away" in str(info.value)
    assert db.read_bytes() == garbage


def test_truncated_storage_is_reported_as_corrupt(db: pathlib.Path) -> None:
    with SqliteQueuesStorage(db) as s:
        s.apply(StorageBatch(push=[("bob", message(i)) for i in range(2000)]))
    data = db.read_bytes()
    assert len(data) > 8192
    db.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # header kept, pages garbage
    with pytest.raises(StorageError, match="corrupt"), SqliteQueuesStorage(db) as s:
        s.load()


def _foreign_with_table(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ann')")
    conn.commit()
    conn.close()


def _foreign_with_user_version(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()


def _foreign_with_meta_table(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE snakemq_meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO snakemq_meta VALUES ('application', 'other')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "make", [_foreign_with_table, _foreign_with_user_version, _foreign_with_meta_table]
)
def test_foreign_sqlite_file_is_refused_and_left_alone(db: pathlib.Path, make: object) -> None:
    assert callable(make)
    make(db)
    before = db.read_bytes()
    with pytest.raises(StorageError, match=r"not a snakemq queue storage.*untouched"):
        SqliteQueuesStorage(db)
    assert db.read_bytes() == before
    assert not os.path.exists(str(db) + "-wal")


def test_newer_schema_is_refused(db: pathlib.Path) -> None:
    with SqliteQueuesStorage(db) as s:
        s.apply(StorageBatch(push=[("bob", message(1))]))
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer.*Upgrade"):
        SqliteQueuesStorage(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM snakemq_queue").fetchone()[0] == 1
    conn.close()


def test_damaged_schema_is_refused(db: pathlib.Path) -> None:
    SqliteQueuesStorage(db).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE snakemq_seen")
    conn.close()
    with pytest.raises(StorageError, match=r"damaged.*snakemq_seen"):
        SqliteQueuesStorage(db)


def test_locked_by_another_process(db: pathlib.Path, helpers: list[Helper]) -> None:
    holder = Helper("hold", str(db))
    helpers.append(holder)
    assert holder.readline() == "ready"
    with pytest.raises(StorageError, match=r"queues\.sqlite.*locked.*another process"):
        SqliteQueuesStorage(db, timeout=0.05)
    holder.kill()  # a crashed holder releases the file
    with SqliteQueuesStorage(db, timeout=0.05) as s:
        assert s.load() == StoredState(queues={}, seen={})


def test_locked_by_an_exclusive_transaction(db: pathlib.Path) -> None:
    SqliteQueuesStorage(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="locked"):
            SqliteQueuesStorage(db, timeout=0.05)
        with pytest.raises(StorageError, match="locked"):
            SqliteQueuesStorage(db, timeout=0.05, exclusive=False)
        other.execute("ROLLBACK")
    finally:
        other.close()
    SqliteQueuesStorage(db).close()


def test_second_storage_on_same_file_is_refused(storage: SqliteQueuesStorage) -> None:
    with pytest.raises(StorageError, match="locked"):
        SqliteQueuesStorage(storage.path, timeout=0.05)
    storage.close()
    SqliteQueuesStorage(storage.path).close()


def test_shared_mode_allows_two_storages(db: pathlib.Path) -> None:
    with (
        SqliteQueuesStorage(db, exclusive=False) as a,
        SqliteQueuesStorage(db, exclusive=False) as b,
    ):
        a.apply(StorageBatch(push=[("bob", message(1))]))
        assert b.load().queues == {"bob": [message(1)]}


def test_directory_path_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StorageError, match=r"is a directory.*queues\.sqlite"):
        SqliteQueuesStorage(tmp_path)


def test_missing_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StorageError, match=r"does not exist.*create the directory"):
        SqliteQueuesStorage(tmp_path / "missing" / "queues.sqlite")


def test_location_under_a_file_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        SqliteQueuesStorage(tmp_path / "file" / "queues.sqlite")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_location_is_refused() -> None:
    # /proc refuses new files even for root, unlike a chmod-ed directory
    with pytest.raises(StorageError, match=r"cannot open queue storage '/proc/"):
        SqliteQueuesStorage("/proc/snakemq-queues.sqlite")


def test_wrong_arguments(db: pathlib.Path) -> None:
    with pytest.raises(TypeError, match="path"):
        SqliteQueuesStorage(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        SqliteQueuesStorage(":memory:")
    with pytest.raises(ValueError, match="synchronous"):
        SqliteQueuesStorage(db, synchronous="OFF")
    with pytest.raises(ValueError, match="timeout"):
        SqliteQueuesStorage(db, timeout=-1)
    assert not db.exists()


def test_close_is_idempotent_and_later_calls_fail(storage: SqliteQueuesStorage) -> None:
    storage.close()
    storage.close()
    assert storage.closed
    assert "closed" in repr(storage)
    with pytest.raises(StorageError, match=r"queues\.sqlite.*closed"):
        storage.load()
    with pytest.raises(StorageError, match="closed"):
        storage.apply(StorageBatch())
    with pytest.raises(StorageError, match="closed"):
        storage.apply(StorageBatch(push=[("bob", message(1))]))


# ----------------------------------------------------------------------- threads


def test_use_from_other_threads(storage: SqliteQueuesStorage) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(n * 100, n * 100 + 100):
                storage.apply(StorageBatch(push=[(f"t{n}", message(i))]))
                storage.load()
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert errors == []
    queues = storage.load().queues
    assert queues == {
        f"t{n}": [message(i) for i in range(n * 100, n * 100 + 100)] for n in range(4)
    }


# ------------------------------------------------------------ snakeMQ 1.6 files

# snakeMQ 1.6's snakemq/storage/sqlite.py, exactly: its one table, and the
# uuid written as binascii.b2a_hex() (bytes on Python 3, text on Python 2).
_SCHEMA_16 = """CREATE TABLE items (queue_name VARCHAR(50),
                                    uuid VARCHAR(32),
                                    data BLOB,
                                    ttl REAL,
                                    flags INTEGER)"""


def _write_16_file(path: pathlib.Path, rows: list[tuple[str, object, bytes, object, int]]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(_SCHEMA_16)
        conn.executemany(
            "INSERT INTO items (queue_name, uuid, data, ttl, flags) VALUES (?, ?, ?, ?, ?)", rows
        )
    conn.close()


def test_a_16_queue_file_is_migrated_in_place(db: pathlib.Path) -> None:
    import binascii

    rows: list[tuple[str, object, bytes, object, int]] = [
        ("bob", binascii.b2a_hex(bytes([1]) * 16), b"first", None, FLAG_PERSISTENT),
        ("alice", binascii.b2a_hex(bytes([2]) * 16), b"", 12.5, FLAG_PERSISTENT),
        ("bob", (bytes([3]) * 16).hex(), b"third", -4.0, 0),  # as text; TTL ran out in 1.6
        ("bob", binascii.b2a_hex(bytes([4]) * 16), b"x" * 70000, 3.0, FLAG_PERSISTENT),
    ]
    _write_16_file(db, rows)
    with SqliteQueuesStorage(db) as s:
        state = s.load()
    assert state.queues == {
        "bob": [
            Message(b"first", ttl=None, flags=FLAG_PERSISTENT, uuid=bytes([1]) * 16),
            Message(b"third", ttl=0.0, flags=0, uuid=bytes([3]) * 16),
            Message(b"x" * 70000, ttl=3.0, flags=FLAG_PERSISTENT, uuid=bytes([4]) * 16),
        ],
        "alice": [Message(b"", ttl=12.5, flags=FLAG_PERSISTENT, uuid=bytes([2]) * 16)],
    }
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "items" not in tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with SqliteQueuesStorage(db) as s:  # and it opens as ours from now on
        assert s.load() == state


def test_a_16_file_with_a_bad_row_is_refused_and_left_alone(db: pathlib.Path) -> None:
    _write_16_file(db, [("bob", b"00" * 16, b"ok", None, 0), ("bob", b"zz", b"bad", None, 0)])
    before = db.read_bytes()
    with pytest.raises(StorageError, match=r"snakeMQ 1\.6 queue file.*row 2.*untouched"):
        SqliteQueuesStorage(db)
    assert db.read_bytes() == before


def _open_capped_fails_and_leaves_the_file(
    db: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening ``db`` may not grow it by more than two pages: a migration
    fails mid-way and must leave the file as it was."""
    before = db.read_bytes()
    conn = sqlite3.connect(db)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    real_connect = sqlite3.connect

    def capped_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        capped: sqlite3.Connection = real_connect(*args, **kwargs)
        capped.execute(f"PRAGMA max_page_count = {pages + 2}")
        return capped

    monkeypatch.setattr(sqlite3, "connect", capped_connect)
    with pytest.raises(StorageError, match="full"):
        SqliteQueuesStorage(db)
    monkeypatch.undo()
    assert db.read_bytes() == before


def test_a_16_migration_that_fails_half_way_leaves_the_original(
    db: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the file may not grow by more than two pages: the copy fails mid-way
    _write_16_file(db, [("bob", b"%032x" % i, b"y" * 4000, None, 0) for i in range(200)])
    _open_capped_fails_and_leaves_the_file(db, monkeypatch)
    with SqliteQueuesStorage(db) as s:
        assert len(s.load().queues["bob"]) == 200


# --------------------------------------------------------- unwritable and full


def test_an_existing_file_on_a_read_only_mount_is_named_not_writable() -> None:
    with small_fs("2m") as where:
        path = where / "queues.sqlite"
        with SqliteQueuesStorage(path) as s:
            s.apply(StorageBatch(push=[("bob", message(1))]))
        remount_read_only(where)
        with pytest.raises(StorageError, match=r"not writable \(it is on a read-only file system"):
            SqliteQueuesStorage(path)


def test_an_existing_read_only_file_is_named_not_writable(db: pathlib.Path) -> None:
    SqliteQueuesStorage(db).close()
    db.chmod(0o444)
    if os.access(db, os.W_OK):  # root ignores the mode bits: make it immutable instead
        subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        with pytest.raises(StorageError, match=r"not writable"):
            SqliteQueuesStorage(db)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=False, capture_output=True)


def _fill(storage: SqliteQueuesStorage, size: int = 4000) -> tuple[list[Message], Message]:
    """Push ``size``-byte messages until the disk is full: (stored, refused)."""
    stored: list[Message] = []
    for i in range(10_000):
        m = Message(os.urandom(size), ttl=None, flags=FLAG_PERSISTENT, uuid=i.to_bytes(16, "big"))
        try:
            storage.apply(StorageBatch(push=[("bob", m)]))
        except StorageError as exc:
            assert "disk is full" in str(exc) and "could not be stored" in str(exc)
            return stored, m
        stored.append(m)
    raise AssertionError("the file system never filled up")


def test_on_a_full_disk_deletes_commit_pushes_are_refused_and_space_comes_back() -> None:
    with small_fs("3m") as where:
        path = where / "queues.sqlite"
        storage = SqliteQueuesStorage(path)
        try:
            stored, refused = _fill(storage)
            assert len(stored) > 50
            # while full, a batch of deletes alone commits (no reserve needed left)
            storage.apply(StorageBatch(delete=[m.uuid for m in stored[:10]]))
            # the I/O layer carries the refused push into the next batch, with
            # the deletes of the messages the peer acknowledged meanwhile
            carried = StorageBatch(push=[("bob", refused)], delete=[m.uuid for m in stored])
            with contextlib.suppress(StorageError):
                storage.apply(carried)
            assert {m.uuid for m in storage.load().queues.get("bob", [])} <= {refused.uuid}
            storage.apply(carried)  # applied again (as a retry does): space is back now
            assert storage.load().queues == {"bob": [refused]}
        finally:
            storage.close()
        assert not os.path.exists(str(path) + "-reserve")
        with SqliteQueuesStorage(path) as again:  # a delivered message never comes back
            assert again.load().queues == {"bob": [refused]}
            more = [
                Message(b"m%d" % i, ttl=None, uuid=(50_000 + i).to_bytes(16, "big"))
                for i in range(50)
            ]
            again.apply(StorageBatch(push=[("bob", m) for m in more]))
            assert again.load().queues == {"bob": [refused, *more]}


def test_a_full_disk_with_nothing_to_delete_keeps_refusing_then_recovers() -> None:
    with small_fs("3m") as where:
        filler = where / "filler"
        filler.write_bytes(b"f" * 1024 * 1024)
        path = where / "queues.sqlite"
        with SqliteQueuesStorage(path) as storage:
            stored: list[Message] = []
            refusals = 0
            for i in range(10_000):  # until refused three times in a row
                m = Message(b"%d" % i * 1000, ttl=None, uuid=i.to_bytes(16, "big"))
                try:
                    storage.apply(StorageBatch(push=[("bob", m)]))
                except StorageError as exc:
                    assert "disk is full" in str(exc)
                    refusals += 1
                    if refusals == 3:
                        break
                else:
                    stored.append(m)
                    refusals = 0
            assert refusals == 3 and not os.path.exists(storage.reserve_path)
            filler.unlink()  # space added from outside
            storage.apply(StorageBatch(push=[("bob", m)]))
            assert storage.load().queues == {"bob": [*stored, m]}
            assert os.path.getsize(storage.reserve_path) == storage.reserve_bytes


# ------------------------------------------------------------ schema 1 files

# snakemq's schema 1, exactly: the queue table had a unique index on (uuid, ident).
_SCHEMA_1 = f"""
CREATE TABLE snakemq_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE snakemq_queue (
    seq INTEGER PRIMARY KEY,
    ident TEXT NOT NULL,
    uuid BLOB NOT NULL CHECK (typeof(uuid) = 'blob' AND length(uuid) = 16),
    data BLOB NOT NULL CHECK (typeof(data) = 'blob'),
    ttl REAL CHECK (ttl IS NULL OR ttl >= 0),
    flags INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 4294967295),
    UNIQUE (uuid, ident)
);
CREATE TABLE snakemq_seen (
    ident TEXT NOT NULL, uuid BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (ident, uuid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX snakemq_seen_order ON snakemq_seen (ident, seq);
INSERT INTO snakemq_meta (key, value) VALUES ('application', 'snakemq'), ('schema_version', '1');
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
"""


def _write_schema_1_file(path: pathlib.Path, rows: list[tuple[str, Message]]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1)
    with conn:
        conn.executemany(
            "INSERT INTO snakemq_queue (ident, uuid, data, ttl, flags) VALUES (?, ?, ?, ?, ?)",
            [(ident, m.uuid, m.data, m.ttl, m.flags) for ident, m in rows],
        )
        conn.execute("INSERT INTO snakemq_seen VALUES ('carol', ?, 0)", (b"s" * 16,))
    conn.close()


def test_a_schema_1_file_is_migrated_in_place_and_keeps_its_order(db: pathlib.Path) -> None:
    shared = message(1000)  # one message sent to two peers: two rows, one uuid
    rows = [("bob", message(1)), ("alice", message(2)), ("bob", shared), ("alice", shared)]
    rows += [("bob", message(i)) for i in range(3, 300)]
    _write_schema_1_file(db, rows)
    with SqliteQueuesStorage(db) as s:
        state = s.load()
        assert state.queues == {
            "bob": [message(1), shared, *[message(i) for i in range(3, 300)]],
            "alice": [message(2), shared],
        }
        assert state.seen == {"carol": [b"s" * 16]}
        # rows of the migrated file are found by their seq: delete and update work
        s.apply(
            StorageBatch(
                delete=[message(1).uuid],
                delete_from=[("bob", shared.uuid)],
                update_ttl=[(message(2).uuid, 5.0)],
            )
        )
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert not any(name.startswith("sqlite_autoindex_snakemq_queue") for name in indexes)
    conn.close()
    with SqliteQueuesStorage(db) as s:
        assert s.load().queues == {
            "bob": [message(i) for i in range(3, 300)],
            "alice": [message(2).with_ttl(5.0), shared],
        }


def test_a_schema_1_migration_that_fails_half_way_leaves_the_original(
    db: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_schema_1_file(
        db, [("bob", Message(b"y" * 4000, uuid=bytes([i]) * 16)) for i in range(200)]
    )
    _open_capped_fails_and_leaves_the_file(db, monkeypatch)
    with SqliteQueuesStorage(db) as s:
        assert len(s.load().queues["bob"]) == 200
