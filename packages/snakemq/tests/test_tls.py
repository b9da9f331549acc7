"""TLS: mutual authentication, a wrong CA, identity binding, handshakes that
never stall other connections."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from snakemq.exceptions import IdentityMismatchError
from snakemq.link import SSLConfig
from sync_helpers import Peer, Recorder


def config(tmp_path: Path, ca: trustme.CA, name: str, *, bind: bool = False) -> SSLConfig:
    cert = ca.issue_cert(name, "localhost", "127.0.0.1")
    pem = tmp_path / f"{name}-{id(ca)}.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp_path / f"ca-{id(ca)}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return SSLConfig(
        str(pem), str(pem), cert_reqs=ssl.CERT_REQUIRED, ca_certs=str(ca_file), bind_ident=bind
    )


def test_mutual_tls_exchange_and_peer_certs(peers: list[Peer], tmp_path: Path) -> None:
    ca = trustme.CA()
    srv, cli = Peer("srv"), Peer("cli")
    peers += [srv, cli]
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv", bind=True))
    cli.connect(port, ssl_config=config(tmp_path, ca, "cli", bind=True))
    srv.start()
    cli.start()
    cli.wait_connected("srv")
    srv.wait_connected("cli")
    cli.send("srv", b"secret", ttl=None)
    srv.send("cli", b"reply", ttl=None)
    assert srv.rec.wait_count("on_message_recv", 1)[0][2].data == b"secret"
    assert cli.rec.wait_count("on_message_recv", 1)[0][2].data == b"reply"
    conn = srv.messaging.connected_idents()["cli"]
    cert = srv.link.getpeercert(conn)
    assert ("DNS", "cli") in cert["subjectAltName"]
    assert srv.link.get_socket_by_conn(conn).getpeercert(True)[:1] == b"\x30"  # DER
    cconn = cli.messaging.connected_idents()["srv"]
    assert ("DNS", "srv") in cli.link.getpeercert(cconn)["subjectAltName"]


@pytest.mark.parametrize("who_is_wrong", ["client trusts another CA", "client cert by another CA"])
def test_wrong_ca_is_rejected_and_the_connector_retries(
    peers: list[Peer], tmp_path: Path, who_is_wrong: str
) -> None:
    ca, other = trustme.CA(), trustme.CA()
    srv, cli = Peer("srv"), Peer("cli")
    peers += [srv, cli]
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv"))
    if who_is_wrong == "client trusts another CA":
        cfg = config(tmp_path, other, "cli")
        cli_cert = ca.issue_cert("cli")  # a good cert, but trusting the wrong CA
        pem = tmp_path / "good-cli.pem"
        cli_cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        cfg = SSLConfig(str(pem), str(pem), cert_reqs=ssl.CERT_REQUIRED, ca_certs=cfg.ca_certs)
    else:
        cfg = config(tmp_path, other, "cli")
        ca_file = tmp_path / "right-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        cfg = SSLConfig(
            cfg.keyfile, cfg.certfile, cert_reqs=ssl.CERT_REQUIRED, ca_certs=str(ca_file)
        )
    cli.link.reconnect_interval = 0.02
    cli.link.reconnect_max_interval = 0.05
    cli.connect(port, ssl_config=cfg)
    failures = Recorder()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "TLS handshake failed" in record.getMessage():
                failures.hook("failed")(record.levelname, record.getMessage())

    handler = Handler(logging.DEBUG)
    logging.getLogger("snakemq.link").addHandler(handler)
    try:
        srv.start()
        cli.start()
        failures.wait_count("failed", 3)  # logged, and the connector keeps retrying
    finally:
        logging.getLogger("snakemq.link").removeHandler(handler)
    # a peer's failure: WARNING, one line naming the peer (as snakemq_anyio logs it)
    for level, text in failures.get("failed"):
        assert level == "WARNING" and "peer=('127.0.0.1', " in text and "\n" not in text, text
    assert srv.rec.get("on_connect") == [] and cli.rec.get("on_connect") == []


def test_identity_binding_rejects_a_spoofed_identifier(peers: list[Peer], tmp_path: Path) -> None:
    ca = trustme.CA()
    srv, mallory = Peer("srv"), Peer("admin")  # cert says "mallory", claims "admin"
    peers += [srv, mallory]
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv", bind=True))
    mallory.connect(port, ssl_config=config(tmp_path, ca, "mallory"))
    srv.start()
    mallory.start()
    _conn, exc = srv.rec.wait_count("on_error", 1)[0]
    assert isinstance(exc, IdentityMismatchError)
    assert "admin" in str(exc)
    assert srv.rec.get("on_connect") == []


def test_stalled_handshake_never_blocks_others_and_times_out(
    peers: list[Peer], tmp_path: Path
) -> None:
    ca = trustme.CA()
    srv, cli = Peer("srv"), Peer("cli")
    peers += [srv, cli]
    srv.link.tls_handshake_timeout = 0.5
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv"))
    srv.start()
    with socket.create_connection(("127.0.0.1", port)) as silent:
        silent.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        cli.connect(port, ssl_config=config(tmp_path, ca, "cli"))
        cli.start()
        cli.wait_connected("srv")
        cli.send("srv", b"through", ttl=None)
        srv.rec.wait_count("on_message_recv", 1)
        silent.settimeout(10)
        assert silent.recv(100) == b""  # closed by the handshake timeout
    assert srv.messaging.connected_idents().keys() == {"cli"}


def test_ssl_config_accepts_a_ready_context(peers: list[Peer], tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("srv", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.check_hostname = False
    srv, cli = Peer("srv"), Peer("cli")
    peers += [srv, cli]
    port = srv.listen(ssl_config=SSLConfig(context=server_ctx))
    cli.connect(port, ssl_config=SSLConfig(context=client_ctx))
    srv.start()
    cli.start()
    cli.send("srv", b"ctx", ttl=None)
    assert srv.rec.wait_count("on_message_recv", 1)[0][2].data == b"ctx"


def test_bulk_over_tls_large_and_small(peers: list[Peer], tmp_path: Path) -> None:
    ca = trustme.CA()
    srv, cli = Peer("srv"), Peer("cli")
    peers += [srv, cli]
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv"))
    cli.connect(port, ssl_config=config(tmp_path, ca, "cli"))
    srv.start()
    cli.start()
    big = [bytes([i]) * (3 * 1024 * 1024 + i) for i in range(3)]
    small = [b"%d" % i for i in range(2000)]
    for data in big + small:
        cli.send("srv", data, ttl=None)
    srv.rec.wait_count("on_message_recv", len(big) + len(small))
    assert srv.received() == big + small
    cli.rec.wait_count("on_message_delivered", len(big) + len(small))


def test_identity_binding_ignores_the_common_name_when_sans_exist(
    peers: list[Peer], tmp_path: Path
) -> None:
    # RFC 6125/9525: SAN "mallory" with a stray CN "alice" is mallory, not alice
    ca = trustme.CA()
    srv, mallory = Peer("srv"), Peer("alice")
    peers += [srv, mallory]
    port = srv.listen(ssl_config=config(tmp_path, ca, "srv", bind=True))
    pem = tmp_path / "mallory-cn-alice.pem"
    ca.issue_cert("mallory", common_name="alice").private_key_and_cert_chain_pem.write_to_path(
        str(pem)
    )
    ca_file = tmp_path / f"ca-{id(ca)}.pem"
    mallory.connect(
        port,
        ssl_config=SSLConfig(
            str(pem), str(pem), cert_reqs=ssl.CERT_REQUIRED, ca_certs=str(ca_file)
        ),
    )
    srv.start()
    mallory.start()
    _conn, exc = srv.rec.wait_count("on_error", 1)[0]
    assert isinstance(exc, IdentityMismatchError)
    assert "alice" in str(exc)
    assert srv.rec.get("on_connect") == []
