"""The async tutorial: two peers on anyio, on asyncio or on trio.

    python async_peers.py bob              # asyncio (the default)
    python async_peers.py alice
    python async_peers.py bob --trio       # the same program on trio (pip install trio)
    python async_peers.py alice --trio

Bob listens and answers every message; Alice dials Bob, sends a message,
waits until Bob's application took it (its acknowledgement), waits for the
answer and exits; then Bob exits too.  (``PORT`` in the environment moves
bob's port, 4030 by default.)
"""

import logging
import os
import sys

import anyio
from snakemq_anyio import Message, Messaging

PORT = int(os.environ.get("PORT", "4030"))


async def bob() -> None:
    async with Messaging("bob") as messaging:
        await messaging.add_listener(("127.0.0.1", PORT))
        print(f"bob listening on port {PORT}", flush=True)
        ident, message = await messaging.receive()
        print(f"bob got {message.data.decode()} from {ident}", flush=True)
        receipt = await messaging.send_message(ident, Message(b"hello alice", ttl=60))
        await receipt.delivered()


async def alice() -> None:
    async with Messaging("alice") as messaging:
        await messaging.add_connector(("127.0.0.1", PORT))  # reconnects by itself
        # ttl=60: the message may wait up to 60 s for bob to be connected
        receipt = await messaging.send_message("bob", Message(b"hello bob", ttl=60))
        await receipt.delivered()
        print("alice: bob took the message", flush=True)
        ident, message = await messaging.receive()
        print(f"alice got {message.data.decode()} from {ident}", flush=True)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role not in ("bob", "alice"):
        sys.exit(__doc__)
    backend = "trio" if "--trio" in sys.argv else "asyncio"
    # warnings of the "snakemq" loggers (snakemq.anyio, snakemq.engine, ...) on stderr
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    anyio.run(bob if role == "bob" else alice, backend=backend)
