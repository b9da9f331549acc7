"""Helper process for the SqliteQueuesStorage crash tests (run, never imported).

Usage:
    python sqlite_writer.py once PATH COUNT   apply one batch of COUNT pushes,
                                              print "stored", wait to be killed
    python sqlite_writer.py loop PATH SIZE    apply batches of SIZE pushes forever,
                                              print "stored N" after each (N total)
    python sqlite_writer.py hold PATH         open the storage, print "ready",
                                              wait to be killed

Message ``i`` is ``message(i)`` below; test_sqlite.py builds the same ones.
"""

from __future__ import annotations

import sys

from snakemq_proto import FLAG_PERSISTENT, Message, SqliteQueuesStorage, StorageBatch


def message(i: int) -> Message:
    return Message(
        b"payload %d " % i * (1 + i % 5),
        ttl=None if i % 3 == 0 else float(i) + 0.5,
        flags=FLAG_PERSISTENT,
        uuid=i.to_bytes(16, "big"),
    )


def ident(i: int) -> str:
    return f"peer{i % 3}"


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    storage = SqliteQueuesStorage(path)
    if mode == "once":
        count = int(argv[2])
        storage.apply(StorageBatch(push=[(ident(i), message(i)) for i in range(count)]))
        print("stored", flush=True)
    elif mode == "loop":
        size = int(argv[2])
        total = 0
        while True:
            batch = [(ident(i), message(i)) for i in range(total, total + size)]
            storage.apply(StorageBatch(push=batch))
            total += size
            print("stored", total, flush=True)
    elif mode == "hold":
        print("ready", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdin.read()  # until killed (or the test closes our stdin)
    storage.close()


if __name__ == "__main__":
    main(sys.argv[1:])
