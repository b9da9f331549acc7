"""snakemq: brokerless, symmetric, reliable messaging (sync, ``selectors``).

The classic snakeMQ API: ``snakemq.link.Link`` (sockets), ``snakemq.packeter.Packeter``
(packets), ``snakemq.messaging.Messaging`` (identified peers, queues, TTL,
persistence).  All protocol rules live in ``snakemq_proto``.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import logging
from typing import IO

try:
    __version__ = _metadata.version("snakemq")
    """The installed version of the ``snakemq`` distribution (the repository's VERSION file)."""
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "init", "init_logging"]

_handler: logging.Handler | None = None


def init() -> None:
    """Kept for the snakeMQ tutorial; does nothing and may be called any number of times."""


def init_logging(stream: IO[str] | None = None, level: int = logging.WARNING) -> None:
    """Log the ``snakemq`` logger hierarchy to ``stream`` (standard error by
    default) at ``level``.  Calling it again replaces the handler it added."""
    global _handler
    logger = logging.getLogger("snakemq")
    if _handler is not None:
        logger.removeHandler(_handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    _handler = handler
