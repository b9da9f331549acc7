"""What the ``snakemq`` subcommands share: exit codes, usage errors, address and
TLS options, and a peer whose loop runs in a background thread.

``cli``, ``_demo`` and ``_clibench`` import from here; nothing here imports them.
"""

from __future__ import annotations

import argparse
import errno
import os
import threading
from typing import Any

from snakemq_proto import StorageError

import snakemq.link
import snakemq.messaging
import snakemq.packeter

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_USAGE = 64


class UsageError(Exception):
    """A problem with the command line or its files; the text says the fix."""


def parse_address(text: str, *, default_host: str = "", what: str = "address") -> tuple[str, int]:
    """Parse ``[HOST:]PORT`` (``[::1]:4000`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {text!r} is not [HOST:]PORT with a port from 0 to 65535")
    if not host and not default_host and what != "--listen":
        raise UsageError(f"{what} {text!r} needs a host, e.g. 127.0.0.1:{port}")
    return host, int(port)


def readable_file(path: str, option: str) -> str:
    """``path`` if it is a readable file, else a ``UsageError`` naming ``option``."""
    if not os.path.isfile(path):
        raise UsageError(f"{option} {path!r}: no such file; check the path")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path!r}: not readable by this user")
    return path


def ssl_config_from(args: argparse.Namespace) -> snakemq.link.SSLConfig | None:
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    if not args.tls_cert:
        raise UsageError("TLS needs --tls-cert (and --tls-key unless the key is in the cert file)")
    import ssl

    cert = readable_file(args.tls_cert, "--tls-cert")
    key = readable_file(args.tls_key, "--tls-key") if args.tls_key else None
    ca = readable_file(args.tls_ca, "--tls-ca") if args.tls_ca else None
    cfg = snakemq.link.SSLConfig(
        key,
        cert,
        cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE,
        ca_certs=ca,
        bind_ident=bool(ca and args.tls_bind_ident),
    )
    try:
        cfg.server_context()
        cfg.client_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS files ({cert}, {key}, {ca}): {exc}") from None
    return cfg


class Peer:
    """One messaging peer with its loop running in a background thread."""

    def __init__(self, ident: str, storage_path: str | None = None) -> None:
        self.storage: Any = None
        if storage_path is not None:
            from snakemq_proto import storage_at

            try:  # an SQLite file or a database URL
                self.storage = storage_at(storage_path)
            except StorageError as exc:
                raise UsageError(str(exc)) from None
        self.link = snakemq.link.Link()
        self.packeter = snakemq.packeter.Packeter(self.link)
        self.messaging = snakemq.messaging.Messaging(ident, "", self.packeter, self.storage)
        self._thread: threading.Thread | None = None

    def listen(
        self, address: tuple[str, int], ssl_config: snakemq.link.SSLConfig | None
    ) -> tuple[str, int]:
        try:
            bound = self.link.add_listener(address, ssl_config=ssl_config)
        except OSError as exc:
            host = address[0] or "all interfaces"
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {address[1]} on {host} is in use: pick another --listen port "
                    "or stop the process that holds it"
                ) from None
            raise UsageError(
                f"cannot listen on {host}:{address[1]}: {exc.strerror or exc}"
            ) from None
        return (bound[0], bound[1])

    def connect(self, address: tuple[str, int], ssl_config: snakemq.link.SSLConfig | None) -> None:
        self.link.add_connector(address, ssl_config=ssl_config)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.link.loop, name="snakemq-loop", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.link.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.link.cleanup()
        if self.storage is not None:
            self.storage.close()
