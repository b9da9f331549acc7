"""Bob, from the snakeMQ tutorial: listens on port 4000 and dials Jack on 4001.

Run the three peers in three terminals, in any order:

    python bob.py
    python jack.py
    python alice.py

Bob prints the message Alice sends him, and exits when she leaves.  (``BOB_PORT`` and
``JACK_PORT`` in the environment move the ports, e.g. when 4000 is taken.)
"""

import os

import snakemq
import snakemq.link
import snakemq.message
import snakemq.messaging
import snakemq.packeter

MY_IDENT = "bob"
BOB_PORT = int(os.environ.get("BOB_PORT", "4000"))
JACK_PORT = int(os.environ.get("JACK_PORT", "4001"))

snakemq.init()
snakemq.init_logging()  # show warnings of the snakemq loggers on stderr
my_link = snakemq.link.Link()
my_packeter = snakemq.packeter.Packeter(my_link)
my_messaging = snakemq.messaging.Messaging(MY_IDENT, "", my_packeter)

my_link.add_listener(("", BOB_PORT))  # listen on all interfaces
my_link.add_connector(("localhost", JACK_PORT))


got_from = set()


def on_recv(conn_id, ident, message):
    print(f"{MY_IDENT} got {message.data!r} from {ident}", flush=True)
    got_from.add(ident)


def on_disconnect(conn_id, ident):
    if ident == "alice" and "alice" in got_from:
        my_link.stop()  # Alice had her acknowledgement and left: so do we


my_messaging.on_message_recv.add(on_recv)
my_messaging.on_disconnect.add(on_disconnect)
print(f"{MY_IDENT} listening on port {BOB_PORT}", flush=True)
try:
    my_link.loop()
finally:
    my_link.cleanup()
