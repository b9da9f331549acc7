"""TLS configuration shared by both implementations.

``SSLConfig`` keeps snakeMQ 1.6's signature (``keyfile, certfile, cert_reqs,
ssl_version, ca_certs``) but is built on ``ssl.SSLContext``; it also accepts
ready contexts.  Building a context is configuration, not I/O: the sockets
are wrapped by the I/O packages.

Identity binding: with ``bind_ident=True`` the remote peer must identify with a
name its verified certificate carries (``cert_idents()``: the subjectAltNames,
the commonName only when there is none, RFC 6125/9525), so nobody can speak
under another peer's identifier.  It needs ``cert_reqs=ssl.CERT_REQUIRED`` and
``ca_certs`` (mutual TLS) so that certificates are verified on both sides.
"""

from __future__ import annotations

import errno
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any


class SSLConfig:
    """TLS settings for a listener or connector.

    Args:
        keyfile: PEM private key of this peer (may be inside ``certfile``).
        certfile: PEM certificate (chain) of this peer.
        cert_reqs: ``ssl.CERT_NONE`` (default, as in 1.6), ``CERT_OPTIONAL``
            or ``CERT_REQUIRED``: whether the *remote* certificate is verified.
        ssl_version: accepted for 1.6 compatibility; modern TLS is always
            negotiated (``PROTOCOL_TLS_*``), older values raise ``ValueError``.
        ca_certs: PEM file of the certificate authorities trusted to sign
            remote certificates.
        context: a ready ``ssl.SSLContext`` used for both directions.
        server_context, client_context: ready contexts per direction.
        check_hostname: verify that a connector's target host matches the
            listener's certificate (needs ``CERT_REQUIRED``).
        bind_ident: require that the remote identifier is named by the remote
            certificate.

    Raises:
        TypeError, ValueError: inconsistent arguments, naming the argument.
        FileNotFoundError, ssl.SSLError: a key or certificate file is missing
            or unusable (raised when the context is first built); the text
            names the argument, the file and, where it can tell, the fix
            (swapped key and certificate, a certificate without its key).
    """

    def __init__(
        self,
        keyfile: str | None = None,
        certfile: str | None = None,
        cert_reqs: ssl.VerifyMode | int = ssl.CERT_NONE,
        ssl_version: int | None = None,
        ca_certs: str | None = None,
        *,
        context: ssl.SSLContext | None = None,
        server_context: ssl.SSLContext | None = None,
        client_context: ssl.SSLContext | None = None,
        check_hostname: bool = False,
        bind_ident: bool = False,
    ) -> None:
        if isinstance(keyfile, ssl.SSLContext):  # SSLConfig(ctx) reads naturally
            context, keyfile = keyfile, None
        for name, value in (
            ("context", context),
            ("server_context", server_context),
            ("client_context", client_context),
        ):
            if value is not None and not isinstance(value, ssl.SSLContext):
                raise TypeError(f"{name} must be an ssl.SSLContext, not {type(value).__name__}")
        if ssl_version not in (
            None,
            ssl.PROTOCOL_TLS,
            ssl.PROTOCOL_TLS_CLIENT,
            ssl.PROTOCOL_TLS_SERVER,
        ):
            raise ValueError(
                f"ssl_version={ssl_version!r} is not supported; leave it out and TLS 1.2+ is "
                "negotiated"
            )
        self.cert_reqs = ssl.VerifyMode(cert_reqs)
        if check_hostname and self.cert_reqs != ssl.CERT_REQUIRED and context is None:
            raise ValueError("check_hostname=True needs cert_reqs=ssl.CERT_REQUIRED")
        if (
            self.cert_reqs != ssl.CERT_NONE
            and ca_certs is None
            and context is None
            and (server_context is None or client_context is None)
        ):
            raise ValueError(
                "cert_reqs asks to verify the remote certificate, so ca_certs must name the "
                "PEM file of the trusted certificate authorities"
            )
        self.keyfile = keyfile
        self.certfile = certfile
        self.ssl_version = ssl_version
        self.ca_certs = ca_certs
        self.check_hostname = check_hostname
        self.bind_ident = bind_ident
        self._server = server_context or context
        self._client = client_context or context

    def server_context(self) -> ssl.SSLContext:
        """The context for accepted connections (built once)."""
        if self._server is None:
            if self.certfile is None:
                raise ValueError("a TLS listener needs certfile (and keyfile) in its SSLConfig")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._load(ctx)
            ctx.verify_mode = self.cert_reqs
            self._server = ctx
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """The context for outgoing connections (built once)."""
        if self._client is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = self.check_hostname
            ctx.verify_mode = self.cert_reqs
            self._load(ctx)
            self._client = ctx
        return self._client

    def _load(self, ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for arg, path in (
            ("certfile", self.certfile),
            ("keyfile", self.keyfile),
            ("ca_certs", self.ca_certs),
        ):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(
                    errno.ENOENT, f"SSLConfig {arg}={path!r}: no such file; check the path", path
                )
        if self.certfile is not None:
            try:
                ctx.load_cert_chain(self.certfile, self.keyfile)
            except ssl.SSLError as exc:
                raise ssl.SSLError(
                    exc.errno, _explain_cert_chain(self.certfile, self.keyfile, exc)
                ) from exc
        if self.ca_certs is not None:
            try:
                ctx.load_verify_locations(self.ca_certs)
            except ssl.SSLError as exc:
                raise ssl.SSLError(
                    exc.errno,
                    f"SSLConfig ca_certs={self.ca_certs!r} holds no usable PEM certificate "
                    f"of a certificate authority ({exc})",
                ) from exc

    def __repr__(self) -> str:
        return (
            f"SSLConfig(certfile={self.certfile!r}, cert_reqs={self.cert_reqs.name}, "
            f"ca_certs={self.ca_certs!r}, bind_ident={self.bind_ident})"
        )


def cert_idents(cert: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a verified peer certificate (``getpeercert()``) carries.

    RFC 6125 section 6.4.4 (and RFC 9525): the DNS and URI subject alternative
    names; the subject's common names count only when the certificate has no
    DNS or URI subjectAltName at all, so a certificate issued for ``mallory``
    with a stray CN ``alice`` is never taken for ``alice``.
    """
    if not cert:
        return frozenset()
    names: set[str] = set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI") and isinstance(value, str):
            names.add(value)
    if names:
        return frozenset(names)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                names.add(value)
    return frozenset(names)


def _pem_blocks(path: str) -> set[str]:
    """The kinds of PEM blocks in a file ("CERTIFICATE", "PRIVATE KEY", ...)."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("ascii", "replace")
    except OSError:
        return set()
    return set(re.findall(r"-----BEGIN ([A-Z0-9 ]+)-----", text))


def _explain_cert_chain(certfile: str, keyfile: str | None, exc: ssl.SSLError) -> str:
    """Why ``load_cert_chain(certfile, keyfile)`` failed, in words that name the
    file and the fix (OpenSSL says only "PEM lib")."""
    cert_kinds = _pem_blocks(certfile)
    key_kinds = _pem_blocks(keyfile) if keyfile is not None else cert_kinds
    has_cert = "CERTIFICATE" in cert_kinds
    has_key = any(kind.endswith("PRIVATE KEY") for kind in key_kinds)
    if keyfile is not None and not has_cert and "CERTIFICATE" in _pem_blocks(keyfile):
        return (
            f"SSLConfig keyfile={keyfile!r} and certfile={certfile!r} look swapped: the first "
            "argument is the private key, the second the certificate "
            f"(SSLConfig(keyfile, certfile)) ({exc})"
        )
    if not has_cert:
        return f"SSLConfig certfile={certfile!r} holds no PEM certificate ({exc})"
    if not has_key:
        where = f"keyfile={keyfile!r}" if keyfile is not None else f"certfile={certfile!r}"
        fix = "" if keyfile is not None else "; pass keyfile, or put the key in the cert file"
        return f"SSLConfig {where} holds no PEM private key{fix} ({exc})"
    return (
        f"SSLConfig certfile={certfile!r} and keyfile={keyfile or certfile!r}: the key does "
        f"not match the certificate, or is encrypted ({exc})"
    )
