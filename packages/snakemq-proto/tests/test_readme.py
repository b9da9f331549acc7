"""The I/O loop shown in README.md runs: two engines over a socket pair."""

from __future__ import annotations

import pathlib
import re
import socket
import threading
from typing import Any

from snakemq_proto import FLAG_PERSISTENT, Engine, MemoryQueuesStorage, Message, StorageBatch

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_loop_exchanges_messages_over_a_socket_pair() -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    said: list[tuple[object, ...]] = []
    both = threading.Event()

    def fake_print(*args: object) -> None:
        said.append(args)
        if sum(1 for a in said if len(a) == 3 and a[1] == "says") == 2:
            both.set()

    namespace: dict[str, Any] = {"print": fake_print}
    exec(compile(code, str(README), "exec"), namespace)
    run_connection = namespace["run_connection"]

    emptied = threading.Event()

    class Storage(MemoryQueuesStorage):
        def apply(self, batch: StorageBatch) -> None:
            super().apply(batch)
            if not self.load().queues:
                emptied.set()  # alice's message was acknowledged

    storage = Storage()
    alice = Engine("alice", persistent=True, keepalive_interval=0.05, keepalive_wait=5)
    bob = Engine("bob")
    alice.send_message("bob", Message(b"hello bob", ttl=None, flags=FLAG_PERSISTENT), 0.0)
    batch = alice.take_storage_batch()
    assert batch is not None
    storage.apply(batch)
    bob.send_message("alice", Message(b"hi alice", ttl=None), 0.0)

    a, b = socket.socketpair()
    threads = [
        threading.Thread(target=run_connection, args=(alice, a, "a", storage)),
        threading.Thread(target=run_connection, args=(bob, b, "b")),
    ]
    try:
        for t in threads:
            t.start()
        assert both.wait(10), said
        assert emptied.wait(10)
    finally:
        a.shutdown(socket.SHUT_RDWR)  # both loops see the end of the stream
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert ("alice", "says", b"hello bob") in said
    assert ("bob", "says", b"hi alice") in said
    a.close()
    b.close()
