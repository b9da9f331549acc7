"""What a user is told about a setup mistake: names the argument, file or
address, and the fix (no sockets here: files, errors and a logger)."""

from __future__ import annotations

import errno
import logging
import re
import ssl

import pytest
import trustme
from snakemq_proto import (
    FLAG_PERSISTENT,
    Engine,
    Message,
    PacketDecoder,
    PacketTooLargeError,
    PersistentWithoutStorage,
    SSLConfig,
    bind_error,
)


def test_bind_error_names_the_address_and_the_fix() -> None:
    exc = bind_error(OSError(errno.EADDRINUSE, "Address already in use"), ("127.0.0.1", 4000))
    assert exc.errno == errno.EADDRINUSE
    assert "cannot listen on 127.0.0.1:4000: Address already in use" in str(exc)
    assert "pick another port" in str(exc)
    everywhere = bind_error(PermissionError(errno.EACCES, "Permission denied"), ("", 80))
    assert isinstance(everywhere, PermissionError)
    assert "port 80 of every interface" in str(everywhere) and "1024" in str(everywhere)


def test_persistent_without_storage_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("snakemq.test")
    check = PersistentWithoutStorage("alice", has_storage=False, logger=logger)
    with caplog.at_level(logging.WARNING, logger="snakemq.test"):
        check.check("bob", Message(b"x"))
        assert not caplog.records
        check.check("bob", Message(b"x", flags=FLAG_PERSISTENT))
        check.check("bob", Message(b"y", flags=FLAG_PERSISTENT))
    assert len(caplog.records) == 1
    assert "'alice' has no storage" in caplog.records[0].getMessage()
    assert "SqliteQueuesStorage('alice.db')" in caplog.records[0].getMessage()


def test_persistent_with_storage_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    check = PersistentWithoutStorage("alice", has_storage=True, logger=logging.getLogger("x"))
    with caplog.at_level(logging.WARNING):
        check.check("bob", Message(b"x", flags=FLAG_PERSISTENT))
    assert not caplog.records


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    cert = ca.issue_cert("bob")
    paths = {"key": str(d / "key.pem"), "cert": str(d / "cert.pem"), "ca": str(d / "ca.pem")}
    cert.private_key_pem.write_to_path(paths["key"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


@pytest.mark.parametrize("arg", ["keyfile", "certfile", "ca_certs"])
def test_missing_file_is_named(pem: dict[str, str], arg: str) -> None:
    files = {"keyfile": pem["key"], "certfile": pem["cert"], "ca_certs": pem["ca"]}
    files[arg] = "/no/such/file.pem"
    config = SSLConfig(**files, cert_reqs=ssl.CERT_REQUIRED)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=rf"{arg}='/no/such/file.pem': no such file"):
        config.server_context()


def test_swapped_key_and_cert_are_named(pem: dict[str, str]) -> None:
    with pytest.raises(ssl.SSLError, match="look swapped") as info:
        SSLConfig(pem["cert"], pem["key"]).server_context()
    assert pem["key"] in str(info.value) and pem["cert"] in str(info.value)


def test_cert_without_key(pem: dict[str, str]) -> None:
    with pytest.raises(ssl.SSLError, match="holds no PEM private key; pass keyfile"):
        SSLConfig(None, pem["cert"]).client_context()


def test_key_given_as_ca(pem: dict[str, str]) -> None:
    with pytest.raises(ssl.SSLError, match=r"ca_certs=.* holds no usable PEM certificate"):
        SSLConfig(pem["key"], pem["cert"], ssl.CERT_REQUIRED, ca_certs=pem["key"]).client_context()


def _handshake(a: Engine, ca: str, b: Engine, cb: str, a_dials: bool | None) -> None:
    a.connection_made(ca, 0.0, outbound=a_dials)
    b.connection_made(cb, 0.0, outbound=None if a_dials is None else not a_dials)
    for _ in range(3):
        b.receive_data(cb, a.data_to_send(ca), 0.0)
        a.receive_data(ca, b.data_to_send(cb), 0.0)


def _closings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [(r.getMessage(), r.levelno) for r in caplog.records if "closing" in r.getMessage()]


def test_a_crossed_dial_is_routine_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bob, jack = Engine("bob"), Engine("jack")
    with caplog.at_level(logging.INFO, logger="snakemq.engine"):
        _handshake(bob, "b1", jack, "j1", a_dials=True)  # bob dialled jack: kept
        _handshake(jack, "j2", bob, "b2", a_dials=True)  # jack dialled bob too
    closings = _closings(caplog)
    assert closings, caplog.records
    assert all(level == logging.INFO for _, level in closings), closings


def test_two_connections_claiming_one_ident_warn(caplog: pytest.LogCaptureFixture) -> None:
    bob, jack, jack2 = Engine("bob"), Engine("jack"), Engine("jack")
    with caplog.at_level(logging.INFO, logger="snakemq.engine"):
        _handshake(jack, "j1", bob, "b1", a_dials=True)  # jack dialled bob
        _handshake(jack2, "k1", bob, "b2", a_dials=True)  # a second "jack" dials bob
    closings = _closings(caplog)
    assert ("conn=b2 ident=None closing: peer 'jack' is already connected", logging.WARNING) in (
        closings
    )


@pytest.mark.parametrize(
    ("first_bytes", "hint"),
    [
        (b"\x16\x03\x01\x02\x00", "the other side speaks TLS, so give this side an ssl_config"),
        (b"\x15\x03\x03\x00\x02", "the other side speaks TLS"),
        (b"GET / HTTP/1.1\r\n", "these bytes are HTTP ('GET '...)"),
        (b"\x7f\xff\xff\xff", "raise max_packet_size if this peer is trusted"),
    ],
)
def test_too_large_header_says_what_it_looks_like(first_bytes: bytes, hint: str) -> None:
    with pytest.raises(PacketTooLargeError, match=re.escape(hint)):
        PacketDecoder(max_packet_size=1 << 20).feed(first_bytes)


def test_tls_file_errors_read_as_plain_sentences(pem: dict[str, str]) -> None:
    with pytest.raises(ssl.SSLError) as info:
        SSLConfig(pem["cert"], pem["key"]).server_context()
    assert str(info.value).startswith("SSLConfig keyfile=")
