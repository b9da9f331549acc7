"""Persistent queues that survive a crash (kill -9) of the sender.

    python persistent.py send      # alice stores 3 messages for bob in alice.db;
                                   # bob is not running, so they wait: kill -9 it now
    python persistent.py receive   # bob listens and prints what arrives
    python persistent.py resume    # alice again: reloads alice.db, delivers, exits

A message with FLAG_PERSISTENT sent through a Messaging that has a storage is
on disk when send_message returns.  It leaves the disk only when bob has
acknowledged it, so whatever happens to alice in between, nothing is lost,
and bob's de-duplication makes sure nothing arrives twice.  (``PORT`` in the
environment moves bob's port, 4010 by default.)
"""

import os
import sys

import snakemq
import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.message import FLAG_PERSISTENT, Message
from snakemq.storage.sqlite import SqliteQueuesStorage

PORT = int(os.environ.get("PORT", "4010"))
role = sys.argv[1] if len(sys.argv) > 1 else ""
if role not in ("send", "resume", "receive"):
    sys.exit(__doc__)

snakemq.init_logging()
my_link = snakemq.link.Link()
my_packeter = snakemq.packeter.Packeter(my_link)

if role == "receive":
    # bob keeps its de-duplication window in bob.db: a resent message is dropped
    storage = SqliteQueuesStorage("bob.db")
    my_messaging = snakemq.messaging.Messaging("bob", "", my_packeter, storage)
    my_link.add_listener(("", PORT))
    print(f"bob listening on port {PORT}", flush=True)

    def on_recv(conn_id, ident, message):
        print(f"bob got {message.data.decode()} from {ident}", flush=True)

    def on_disconnect(conn_id, ident):
        my_link.stop()  # alice delivered everything and left

    my_messaging.on_message_recv.add(on_recv)
    my_messaging.on_disconnect.add(on_disconnect)
else:
    storage = SqliteQueuesStorage("alice.db")
    my_messaging = snakemq.messaging.Messaging("alice", "", my_packeter, storage)
    my_link.add_connector(("localhost", PORT))
    if role == "send":
        for i in range(1, 4):
            message = Message(f"message {i}".encode(), ttl=3600, flags=FLAG_PERSISTENT)
            my_messaging.send_message("bob", message)  # on disk when this returns
        print(f"alice stored {len(my_messaging.queued('bob'))} messages for bob", flush=True)
    else:
        print(f"alice reloaded {len(my_messaging.queued('bob'))} messages for bob", flush=True)

    finished = []

    def on_delivered(ident, uuid):
        if not my_messaging.queued("bob") and not finished:
            finished.append(True)
            print("bob acknowledged everything; alice.db holds nothing for him", flush=True)
            my_link.stop()

    my_messaging.on_message_delivered.add(on_delivered)

try:
    my_link.loop()
finally:
    my_link.cleanup()
    storage.close()
