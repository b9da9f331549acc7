"""Alice, from the snakeMQ tutorial: dials Bob (4000) and Jack (4001), sends each
a message and exits once both acknowledged it.

Sending does not need a connection: the messages wait in Alice's queues (for
up to their TTL, 600 s) until Bob and Jack are there, so the peers can start
in any order.  (``BOB_PORT`` and ``JACK_PORT`` in the environment move the
ports.)
"""

import os

import snakemq
import snakemq.link
import snakemq.message
import snakemq.messaging
import snakemq.packeter

MY_IDENT = "alice"
BOB_PORT = int(os.environ.get("BOB_PORT", "4000"))
JACK_PORT = int(os.environ.get("JACK_PORT", "4001"))

snakemq.init()
snakemq.init_logging()  # show warnings of the snakemq loggers on stderr
my_link = snakemq.link.Link()
my_packeter = snakemq.packeter.Packeter(my_link)
my_messaging = snakemq.messaging.Messaging(MY_IDENT, "", my_packeter)

my_link.add_connector(("localhost", BOB_PORT))
my_link.add_connector(("localhost", JACK_PORT))

waiting = {"bob", "jack"}


def on_delivered(ident, uuid):
    print(f"{ident} acknowledged the message", flush=True)
    waiting.discard(ident)
    if not waiting:
        my_link.stop()


def on_drop(ident, uuid):
    print(f"the message to {ident} was dropped: its TTL ran out", flush=True)
    my_link.stop()


my_messaging.on_message_delivered.add(on_delivered)
my_messaging.on_message_drop.add(on_drop)

# queue first, then run the loop: loop() blocks until stop()
for ident in ("bob", "jack"):
    message = snakemq.message.Message(f"hello {ident}".encode(), ttl=600)
    my_messaging.send_message(ident, message)

try:
    my_link.loop()
finally:
    my_link.cleanup()
