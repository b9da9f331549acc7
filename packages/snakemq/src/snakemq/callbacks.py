"""``Callback``: a list of functions called in order (snakeMQ 1.6 API).

Unlike 1.6, a function that raises does not stop the others and does not
escape ``Link.loop()``: the exception is logged with its traceback under the
``snakemq.callbacks`` logger and the next function runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, ParamSpec

P = ParamSpec("P")

log = logging.getLogger("snakemq.callbacks")


class Callback(Generic[P]):
    """Functions to call with the same arguments, in the order they were added."""

    __slots__ = ("callbacks",)

    def __init__(self) -> None:
        self.callbacks: list[Callable[P, object]] = []

    def add(self, func: Callable[P, object]) -> None:
        """Call ``func`` too (after the functions already added)."""
        self.callbacks.append(func)

    def remove(self, func: Callable[P, object]) -> None:
        """Stop calling ``func``.

        Raises:
            ValueError: ``func`` was not added.
        """
        self.callbacks.remove(func)

    def clear(self) -> None:
        """Remove every function."""
        self.callbacks.clear()

    def __len__(self) -> int:
        return len(self.callbacks)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for func in tuple(self.callbacks):  # a function may remove itself
            try:
                func(*args, **kwargs)
            except Exception:
                failed(func)


def failed(func: Callable[..., object]) -> None:
    """Log that ``func``, called as one of a ``Callback``'s functions, raised
    (with the traceback; the others still run).  For the hot paths that call
    a ``Callback``'s only function themselves."""
    log.exception("callback %r raised; the others still run", func)
