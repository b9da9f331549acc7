"""A sending peer run as a subprocess by test_persistence.py (to be SIGKILLed).

Usage: python persistent_sender.py BACKEND DB PORT COUNT

Sends COUNT persistent messages b"0", b"1", ... to "receiver" (connecting to
127.0.0.1:PORT unless PORT is 0; DB is an SQLite file or a database URL)
and prints each index once its
``send_message`` returned, i.e. once the message is durable; then "done".
"""

from __future__ import annotations

import sys

import anyio
from snakemq_anyio import FLAG_PERSISTENT, Message, Messaging, SqliteQueuesStorage


async def main(db: str, port: int, count: int) -> None:
    # a database URL is opened by Messaging, which waits there as a standby
    # while another process serves "sender"
    storage = db if "://" in db else SqliteQueuesStorage(db)
    async with Messaging("sender", storage=storage) as messaging:
        if port:
            await messaging.add_connector(("127.0.0.1", port))
        for i in range(count):
            message = Message(b"%d" % i, ttl=None, flags=FLAG_PERSISTENT)
            await messaging.send_message("receiver", message)
            print(i, flush=True)
        print("done", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    backend, db, port, count = sys.argv[1:]
    anyio.run(main, db, int(port), int(count), backend=backend)
