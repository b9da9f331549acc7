"""What the I/O packages tell a user about a mistake in the program's setup:
the same words from ``snakemq`` and ``snakemq_anyio``, written once here.

No I/O happens here: an I/O layer passes in the exception it caught, or a
logger to warn on.
"""

from __future__ import annotations

import errno
import logging

from ._message import FLAG_PERSISTENT, Message

__all__ = ["PersistentWithoutStorage", "bind_error"]

_BIND_FIX = {
    errno.EADDRINUSE: "another socket is bound to it: pick another port, or stop the process "
    "that listens there (`ss -ltnp` shows it)",
    errno.EACCES: "this user may not bind it (ports below 1024 need privileges): pick a port "
    "of 1024 or more",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: listen on one it "
    'has, or on "" for every interface',
}


def bind_error(exc: OSError, address: tuple[str, int]) -> OSError:
    """``exc``, raised while binding a listener to ``address``, as an ``OSError``
    of the same errno (and subclass) whose text names the address and the fix."""
    host, port = address
    where = f"{host}:{port}" if host else f"port {port} of every interface"
    fix = _BIND_FIX.get(exc.errno or 0, "check the address")
    return OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}; {fix}")


class PersistentWithoutStorage:
    """Warns once per messaging object that ``FLAG_PERSISTENT`` messages are
    kept in memory only when it has no storage (1.6 accepted them silently,
    so this is a warning, not an error)."""

    __slots__ = ("_armed", "_ident", "_logger")

    def __init__(self, ident: str, has_storage: bool, logger: logging.Logger) -> None:
        self._armed = not has_storage
        self._ident = ident
        self._logger = logger

    def check(self, to: str, message: Message) -> None:
        """Call for every message sent; costs one test once it has warned."""
        if self._armed and message.flags & FLAG_PERSISTENT:
            self._armed = False
            self._logger.warning(
                "a message to %r has FLAG_PERSISTENT, but messaging %r has no storage: "
                "it is kept in memory only and lost if this process stops; pass a storage "
                "(e.g. SqliteQueuesStorage(%r)) to keep such messages (warned once)",
                to,
                self._ident,
                f"{self._ident}.db",
            )
