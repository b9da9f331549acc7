"""What a user is told about a setup mistake: names the argument, file or
address, and the fix (no sockets here: files, errors and a logger)."""

from __future__ import annotations

import errno
import logging
import ssl

import pytest
import trustme
from snakemq_proto import FLAG_PERSISTENT, Message, PersistentWithoutStorage, SSLConfig, bind_error


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
