"""Mutual TLS with identity binding: a peer may only use the identifier its
certificate names.

    python tls_identity.py certs        # a test CA and certificates in ./certs
    python tls_identity.py bob          # listens with TLS, requires client certs
    python tls_identity.py alice        # alice's certificate, identifier "alice": accepted
    python tls_identity.py mallory      # mallory's certificate claiming "alice": refused

``SSLConfig(key, cert)`` alone (the 1.6 tutorial) encrypts, but checks no one's
certificate: anyone can connect and claim any identifier.  Authentication needs
``cert_reqs=ssl.CERT_REQUIRED`` and ``ca_certs`` (each side verifies the other),
and ``bind_ident=True`` (the identifier must be named by the certificate).
The "certs" step uses trustme (``pip install trustme``), a test CA: in
production the certificates come from your own CA.  (``PORT`` in the
environment moves bob's port, 4020 by default.)
"""

import os
import ssl
import sys

import snakemq
import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.message import Message

PORT = int(os.environ.get("PORT", "4020"))
role = sys.argv[1] if len(sys.argv) > 1 else ""

if role == "certs":
    import trustme

    os.makedirs("certs", exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path("certs/ca.pem")
    for name in ("bob", "alice", "mallory"):
        # one PEM file with the key and the certificate chain; the name is a SAN
        ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(f"certs/{name}.pem")
    print("wrote certs/ca.pem, certs/bob.pem, certs/alice.pem, certs/mallory.pem")
    sys.exit(0)
if role not in ("bob", "alice", "mallory"):
    sys.exit(__doc__)

ident = "bob" if role == "bob" else "alice"  # mallory pretends to be alice
sslcfg = snakemq.link.SSLConfig(
    None,  # the key is inside the certificate file
    f"certs/{role}.pem",
    cert_reqs=ssl.CERT_REQUIRED,
    ca_certs="certs/ca.pem",
    bind_ident=True,
)

snakemq.init_logging()
my_link = snakemq.link.Link()
my_packeter = snakemq.packeter.Packeter(my_link)
my_messaging = snakemq.messaging.Messaging(ident, "", my_packeter)

if role == "bob":
    my_link.add_listener(("127.0.0.1", PORT), ssl_config=sslcfg)
    print(f"bob listening with TLS on port {PORT}", flush=True)

    def on_recv(conn_id, peer, message):
        cert = my_link.getpeercert(conn_id) or {}
        names = [value for kind, value in cert.get("subjectAltName", ())]
        print(f"bob got {message.data.decode()} from {peer} (certificate names {names})")
        my_link.stop()

    def on_error(conn_id, exc):
        print(f"bob refused a connection: {exc}", flush=True)

    my_messaging.on_message_recv.add(on_recv)
    my_messaging.on_error.add(on_error)
    runtime = None
else:
    my_link.add_connector(("127.0.0.1", PORT), ssl_config=sslcfg)
    my_messaging.send_message("bob", Message(f"hello from {role}".encode(), ttl=60))

    def on_delivered(peer, uuid):
        print(f"{role}: bob acknowledged the message", flush=True)
        my_link.stop()

    my_messaging.on_message_delivered.add(on_delivered)
    runtime = 5.0  # mallory never gets through: give up after 5 s

try:
    my_link.loop(runtime=runtime)
    if role == "mallory":
        print("mallory: not delivered (bob refuses 'alice' without alice's certificate)")
finally:
    my_link.cleanup()
