"""Remote procedure calls between two peers (sync snakemq).

    python rpc.py server     # "calc" object served by the peer "server"
    python rpc.py client     # calls it, prints the results, exits (and so does the server)

The default serializer is JSON (snakemq_proto.rpc.JsonPickler): it never
unpickles data from the network.  snakeMQ 1.6 used pickle; pass
``pickler=pickle`` to RpcServer and RpcClient only between peers you trust
(and to talk to 1.6 RPC peers).  (``PORT`` in the environment moves the
server's port, 4040 by default.)
"""

import os
import sys
import threading

import snakemq
import snakemq.link
import snakemq.messaging
import snakemq.packeter
import snakemq.rpc

PORT = int(os.environ.get("PORT", "4040"))
role = sys.argv[1] if len(sys.argv) > 1 else ""
if role not in ("server", "client"):
    sys.exit(__doc__)

snakemq.init_logging()
my_link = snakemq.link.Link()
my_packeter = snakemq.packeter.Packeter(my_link)
my_messaging = snakemq.messaging.Messaging(role, "", my_packeter)
hook = snakemq.messaging.ReceiveHook(my_messaging)


class Calculator:
    def add(self, a, b):
        return a + b

    def divide(self, a, b):
        return a / b


if role == "server":
    server = snakemq.rpc.RpcServer(hook)
    server.register_object(Calculator(), "calc")
    my_link.add_listener(("127.0.0.1", PORT))
    print(f"server listening on port {PORT}", flush=True)
    my_messaging.on_disconnect.add(lambda conn_id, ident: my_link.stop())  # client done
    try:
        my_link.loop()
    finally:
        my_link.cleanup()
    sys.exit(0)

client = snakemq.rpc.RpcClient(hook)
my_link.add_connector(("127.0.0.1", PORT))
# calls block the calling thread, so the loop runs in a thread of its own
loop = threading.Thread(target=my_link.loop)
loop.start()
try:
    calc = client.get_proxy("server", "calc")
    calc.add.set_timeout(10)  # seconds to wait for the server to be there and answer
    print("add(2, 3) =", calc.add(2, 3))
    try:
        calc.divide.set_timeout(10)
        calc.divide(1, 0)
    except ZeroDivisionError as exc:
        print("divide(1, 0) raised ZeroDivisionError:", exc)
finally:
    my_link.stop()
    loop.join()
    my_link.cleanup()
