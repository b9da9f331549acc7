"""TLS with mutual authentication and identity binding, over real sockets."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import anyio
import pytest
import trustme
from snakemq_anyio import (
    ErrorOccurred,
    IdentityMismatchError,
    Message,
    Messaging,
    SSLConfig,
    TLSHandshakeError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _config(ca: trustme.CA, tmp_path: Path, name: str, *, bind_ident: bool = True) -> SSLConfig:
    ca_file = tmp_path / "ca.pem"
    if not ca_file.exists():
        ca.cert_pem.write_to_path(str(ca_file))
    pem = tmp_path / f"{name}.pem"
    ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(pem))
    return SSLConfig(
        keyfile=str(pem),
        certfile=str(pem),
        cert_reqs=ssl.CERT_REQUIRED,
        ca_certs=str(ca_file),
        bind_ident=bind_ident,
    )


async def test_mutual_tls_exchange(ca: trustme.CA, tmp_path: Path) -> None:
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        _host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
        await bob.add_connector(("127.0.0.1", port), _config(ca, tmp_path, "bob"))
        with anyio.fail_after(10):
            await alice.wait_connected("bob")
            receipt = await bob.send_message("alice", Message(b"over tls", ttl=10))
            ident, message = await alice.receive()
            assert (ident, message.data) == ("bob", b"over tls")
            await receipt.delivered()
            await alice.send_message("bob", Message(b"back", ttl=10))
            assert (await bob.receive())[1].data == b"back"


async def test_identity_must_match_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    # mallory holds a valid certificate, but for "mallory": she cannot speak as "bob"
    async with Messaging("alice") as alice, Messaging("bob") as mallory:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
            await mallory.add_connector(("127.0.0.1", port), _config(ca, tmp_path, "mallory"))
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, ErrorOccurred):
                        assert isinstance(event.error, IdentityMismatchError)
                        assert "mallory" in str(event.error)
                        break
            assert not alice.is_connected("bob")


async def test_client_without_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
            anonymous = SSLConfig(cert_reqs=ssl.CERT_REQUIRED, ca_certs=str(ca_file))
            await bob.add_connector(("127.0.0.1", port), anonymous)
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, ErrorOccurred):
                        assert isinstance(event.error, TLSHandshakeError)
                        break
            assert not alice.is_connected("bob")


async def test_plain_client_against_tls_listener_is_refused(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Messaging("alice") as alice, Messaging("bob") as bob:
        with alice.events() as events, caplog.at_level(logging.DEBUG, logger="snakemq"):
            _host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
            await bob.add_connector(("127.0.0.1", port))
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, ErrorOccurred):
                        assert isinstance(event.error, TLSHandshakeError)
                        break
    # a peer's failure: WARNING, one line naming the peer (as the sync package logs it)
    (record, *_) = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    text = record.getMessage()
    assert record.levelname == "WARNING" and "peer=('127.0.0.1', " in text and "\n" not in text


async def test_tls_handshake_has_a_timeout(ca: trustme.CA, tmp_path: Path) -> None:
    async with Messaging("alice", handshake_timeout=0.2) as alice:
        with alice.events() as events:
            host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
            async with await anyio.connect_tcp(host, port) as mute:  # never says hello
                with anyio.fail_after(10):
                    event = await events.receive()
                    assert isinstance(event, ErrorOccurred)
                    assert isinstance(event.error, TLSHandshakeError)
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await mute.receive()


async def test_identity_binding_ignores_the_common_name_when_sans_exist(
    ca: trustme.CA, tmp_path: Path
) -> None:
    # RFC 6125/9525: SAN "mallory" with a stray CN "bob" is mallory, not bob
    async with Messaging("alice") as alice, Messaging("bob") as mallory:
        with alice.events() as events:
            _host, port = await alice.add_listener(("127.0.0.1", 0), _config(ca, tmp_path, "alice"))
            pem = tmp_path / "mallory-cn-bob.pem"
            leaf = ca.issue_cert("mallory", common_name="bob")
            leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
            spoof = SSLConfig(
                keyfile=str(pem),
                certfile=str(pem),
                cert_reqs=ssl.CERT_REQUIRED,
                ca_certs=str(tmp_path / "ca.pem"),
            )
            await mallory.add_connector(("127.0.0.1", port), spoof)
            with anyio.fail_after(10):
                async for event in events:
                    if isinstance(event, ErrorOccurred):
                        assert isinstance(event.error, IdentityMismatchError)
                        assert "mallory" in str(event.error)
                        break
            assert not alice.is_connected("bob")
