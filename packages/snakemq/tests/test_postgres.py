"""Queues in PostgreSQL (SqlAlchemyQueuesStorage) under Messaging: SIGKILLs of
the sender, a standby taking over a killed holder, the database server
restarted mid-stream, and a storage written against 1.6's interface."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from snakemq.exceptions import StorageError
from snakemq.message import FLAG_PERSISTENT, Message
from snakemq.storage.sqla import SqlAlchemyQueuesStorage
from snakemq_proto.testing import TestPostgres, cut_holder_and_take_over
from sync_helpers import WAIT, Peer
from test_persistence import lines_until, run_sender


def _drain(proc: Any) -> list[str]:
    assert proc.stdout is not None
    lines = [line.strip() for line in proc.stdout]
    proc.stdout.close()
    return lines


def _no_duplicates(got: Iterable[bytes]) -> set[bytes]:
    got = list(got)
    assert len(got) == len(set(got)), "a message was handed to the application twice"
    return set(got)


def test_sigkill_of_sender_three_times_loses_nothing(
    peers: list[Peer], tmp_path: Path, pg_url: str
) -> None:
    receiver = Peer("receiver")
    peers.append(receiver)
    port = receiver.listen()
    receiver.start()
    durable: set[bytes] = set()
    for run, tag in enumerate("abc"):
        proc = run_sender(tmp_path, port, pg_url, 3000, kill_at=600, tag=tag)
        try:
            lines = _drain(proc)
            assert proc.wait(WAIT) == -signal.SIGKILL
        finally:
            proc.kill()
            proc.wait()
        # the sender prints each durable number; the last one counts
        last_durable = max(int(line) for line in lines if line.isdigit())
        assert last_durable == 600
        durable |= {b"%s%d" % (tag.encode(), i) for i in range(last_durable + 1)}
        receiver.rec.wait_count("on_disconnect", run + 1)
    last = run_sender(tmp_path, port, pg_url, 0)
    try:
        lines = lines_until(last, lambda line: line.startswith("queued"))
        assert int(lines[-1].split()[1]) > 0, "the kills came too late to test anything"
        lines_until(last, lambda line: line == "empty")
        assert last.wait(WAIT) == 0
    finally:
        last.kill()
        last.wait()
        _drain(last)
    got = _no_duplicates(receiver.received())
    assert not durable - got, f"{len(durable - got)} durable messages were lost"
    with SqlAlchemyQueuesStorage(pg_url, ident="sender") as storage:
        assert storage.load().queues.get("receiver", []) == []


def test_standby_takes_over_a_killed_holder_mid_stream(
    peers: list[Peer], tmp_path: Path, pg_url: str
) -> None:
    receiver = Peer("receiver")
    peers.append(receiver)
    port = receiver.listen()
    receiver.start()
    holder = run_sender(tmp_path, port, pg_url, 100_000)
    standby = None
    try:
        seen = lines_until(holder, lambda line: line.startswith("standby"))
        assert seen[-1] == "standby False"
        standby = run_sender(tmp_path, port, pg_url, 0)
        assert lines_until(standby, lambda line: line.startswith("standby"))[-1] == "standby True"
        # the holder goes on streaming; kill it some messages later
        seen += lines_until(holder, lambda line: line.isdigit() and int(line) >= 300)
        holder.send_signal(signal.SIGKILL)
        seen += _drain(holder)
        assert holder.wait(WAIT) == -signal.SIGKILL
        killed = time.monotonic()
        connects = len(receiver.rec.get("on_connect"))
        receiver.rec.wait_count("on_connect", connects + 1)  # the standby dialled
        failover = time.monotonic() - killed
        print(f"failover: holder killed -> standby connected in {failover:.2f} s")
        assert failover < 10.0
        # the sender prints each durable number; the last one counts
        last_durable = max(int(line) for line in seen if line.isdigit())
        assert last_durable >= 300
        durable = {b"%d" % i for i in range(last_durable + 1)}
        # (the holder may have delivered all of it already: the standby then
        # has nothing left to send)
        receiver.rec.wait(lambda: durable <= set(receiver.received()), what="every message")
    finally:
        for proc in (holder, standby):
            if proc is not None:
                proc.kill()
                proc.wait()
                if proc.stdout is not None and not proc.stdout.closed:
                    _drain(proc)
    got = _no_duplicates(receiver.received())
    assert not durable - got, f"{len(durable - got)} durable messages were lost"


def test_server_restarted_mid_stream(
    peers: list[Peer], postgres: TestPostgres, pg_url: str
) -> None:
    receiver = Peer("receiver")
    storage = SqlAlchemyQueuesStorage(pg_url)
    sender = Peer("sender", storage)
    peers += [receiver, sender]
    try:
        _restart_mid_stream(postgres, receiver, sender, storage)
    finally:
        sender.stop()
        storage.close()


def _restart_mid_stream(
    postgres: TestPostgres, receiver: Peer, sender: Peer, storage: SqlAlchemyQueuesStorage
) -> None:
    sender.connect(receiver.listen())
    receiver.start()
    sender.start()
    sent = []
    for i in range(300):
        if i == 100:
            postgres.stop()
            with pytest.raises(StorageError, match=r"cannot write queue storage .*\*\*\*@"):
                sender.messaging.send_message(
                    "receiver", Message(b"down", ttl=None, flags=FLAG_PERSISTENT)
                )
            postgres.start()
        message = Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT)
        sender.messaging.send_message("receiver", message)
        sent.append(message.data)
    receiver.rec.wait(lambda: set(sent) <= set(receiver.received()), what="every message")
    got = _no_duplicates(receiver.received())
    assert set(sent) <= got
    # the deletes that failed while the server was down were applied later
    sender.rec.wait(lambda: not sender.messaging.queued("receiver"), what="empty queue")
    deadline = time.monotonic() + WAIT
    while storage.load().queues.get("receiver") and time.monotonic() < deadline:
        sender.link.wakeup_poll()
        time.sleep(0.05)  # the loop applies pending deletes on its next pass
    assert storage.load().queues.get("receiver", []) == []


class DictStorage16:
    """A storage written against snakeMQ 1.6's QueuesStorageBase."""

    def __init__(self) -> None:
        self.queues: dict[str, list[Any]] = {}
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")

    def get_queues(self) -> list[str]:
        return list(self.queues)

    def get_items(self, queue_name: str) -> list[Any]:
        return list(self.queues.get(queue_name, []))

    def push(self, queue_name: str, item: Any) -> None:
        self.calls.append("push")
        self.queues.setdefault(queue_name, []).append(item)

    def delete_items(self, items: list[Any]) -> None:
        self.calls.append("delete_items")
        uuids = {item.uuid for item in items}
        for queue in self.queues.values():
            queue[:] = [item for item in queue if item.uuid not in uuids]

    def delete_all(self) -> None:
        self.queues.clear()

    def update_items_ttl(self, items: list[Any]) -> None:
        self.calls.append("update_items_ttl")


def test_storage_of_16_interface_plugs_in_through_the_adapter(peers: list[Peer]) -> None:
    legacy = DictStorage16()
    stored = Message(b"from before", ttl=None, flags=FLAG_PERSISTENT)
    legacy.queues["receiver"] = [stored]
    sender = Peer("sender", legacy)  # type: ignore[arg-type]
    receiver = Peer("receiver")
    peers += [sender, receiver]
    assert sender.messaging.queued("receiver") == [stored]
    sender.send("receiver", b"new", ttl=None, flags=FLAG_PERSISTENT)
    assert [m.data for m in legacy.queues["receiver"]] == [b"from before", b"new"]
    sender.connect(receiver.listen())
    receiver.start()
    sender.start()
    receiver.rec.wait(lambda: len(receiver.received()) == 2, what="both messages")
    assert receiver.received() == [b"from before", b"new"]
    sender.rec.wait_count("on_message_delivered", 2)
    deadline = time.monotonic() + WAIT
    while legacy.queues["receiver"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the loop applies the deletes on its next pass
    assert legacy.queues["receiver"] == []
    assert "delete_items" in legacy.calls


def test_standby_neither_listens_nor_dials_until_it_takes_over(
    peers: list[Peer], pg_url: str
) -> None:
    import socket

    other = Peer("other")
    peers.append(other)
    other_port = other.listen()
    other.start()
    holder_storage = SqlAlchemyQueuesStorage(pg_url, lease_poll=0.1)
    holder = Peer("me", holder_storage)
    standby_storage = SqlAlchemyQueuesStorage(pg_url, lease_poll=0.1)
    standby = Peer("me", standby_storage)
    peers += [holder, standby]
    try:
        assert not holder.messaging.standby and standby.messaging.standby
        with socket.socket() as probe:  # a standby binds nothing: give it a port
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        assert standby.link.add_listener(("127.0.0.1", port)) == ("127.0.0.1", port)
        standby.connect(other_port)
        standby.start()
        with pytest.raises(StorageError, match="standby"):
            standby.messaging.send_message("other", Message(b"x", ttl=None))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
        holder.send("other", b"queued by the holder", ttl=None, flags=FLAG_PERSISTENT)
        assert other.rec.get("on_connect") == []  # nobody dialled as "me"
        holder.stop()
        holder_storage.close()  # as the server does when the holder dies
        other.rec.wait_count("on_connect", 1)  # the standby took over and dialled
        assert not standby.messaging.standby
        other.rec.wait(lambda: other.received() == [b"queued by the holder"], what="message")
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()  # listening now
    finally:
        standby.stop()
        standby_storage.close()
        holder_storage.close()


def test_cli_takes_a_database_url_wherever_it_takes_a_file(pg_url: str) -> None:
    from test_cli import Listener, run

    sent = run(
        "send", "--ident", "alice", "--connect", "127.0.0.1:9", "--to", "bob", "--ttl", "600",
        "--persistent", "--storage", pg_url, "--timeout", "0.3", "kept", "also kept",
    )  # fmt: skip
    assert sent.returncode == 2, sent.stderr
    assert "needs --ident" not in sent.stderr
    assert "give --ident" in run("queues", pg_url).stderr
    shown = run("queues", pg_url, "--ident", "alice")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("bob"))
    assert row.split()[1:3] == ["2", str(len("kept") + len("also kept"))]
    assert "no queued messages" in run("queues", pg_url, "--ident", "carol").stdout
    bob = Listener("--ident", "bob", "--count", "2", "--storage", pg_url)
    try:
        flushed = run(
            "send", "--ident", "alice", "--connect", bob.address, "--to", "bob", "--storage", pg_url
        )
        assert flushed.returncode == 0, flushed.stderr
        _, out, _ = bob.finish()
    finally:
        bob.kill()
    assert [line.split(" ", 3)[3] for line in out.splitlines()] == ["kept", "also kept"]
    assert "no queued messages" in run("queues", pg_url, "--ident", "alice").stdout
    bad = run("queues", pg_url.replace("snakemq-test-pw", "wrong"), "--ident", "alice")
    assert bad.returncode != 0 and "user name or password" in bad.stderr
    assert "wrong" not in bad.stderr


@pytest.mark.parametrize("noticed_by", ["its next write", "its lease check"])
def test_holder_that_lost_its_lease_steps_down(
    peers: list[Peer], pg_url: str, noticed_by: str
) -> None:
    receiver = Peer("receiver")
    # lease checks every 0.2 s, or none during the test (then a write finds out)
    storage = SqlAlchemyQueuesStorage(pg_url, lease_poll=60 if "write" in noticed_by else 0.2)
    holder = Peer("sender", storage)
    peers += [receiver, holder]
    holder.connect(receiver.listen())
    receiver.start()
    holder.start()
    other = None
    try:
        holder.send("receiver", b"before", ttl=None, flags=FLAG_PERSISTENT)
        receiver.rec.wait(lambda: receiver.received() == [b"before"], what="first message")
        # the holder's session is cut (a network cut) and another process takes the lease
        other = cut_holder_and_take_over(pg_url, "sender")
        cut = time.monotonic()
        if "write" in noticed_by:
            with pytest.raises(StorageError, match="taken over"):
                holder.send("receiver", b"after", ttl=None, flags=FLAG_PERSISTENT)
            holder.link.wakeup_poll()
        # the holder stops serving "sender": connections closed, loop ended
        receiver.rec.wait_count("on_disconnect", 1)
        assert holder._thread is not None
        holder._thread.join(WAIT)
        assert not holder._thread.is_alive(), "the holder's loop goes on"
        assert time.monotonic() - cut < 5.0
        assert storage.lost
    finally:
        holder.stop()
        storage.close()
        if other is not None:
            other.close()
