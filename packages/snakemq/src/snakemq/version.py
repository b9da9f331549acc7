"""Version numbers (snakeMQ 1.6 module)."""

from __future__ import annotations

from snakemq_proto import PROTOCOL_VERSION

from . import __version__

VERSION = __version__
"""The version of this package."""

__all__ = ["PROTOCOL_VERSION", "VERSION"]
