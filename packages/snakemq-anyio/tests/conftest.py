"""Every async test runs on asyncio and on trio."""

from __future__ import annotations

import asyncio.selector_events
import functools
from typing import Any

import pytest


def _guard_sock_accept() -> None:
    """CPython's selector loop answers an accept whose future was already
    cancelled with ``InvalidStateError`` (python/cpython#153761, fixed
    upstream): a listener closed while a connection arrives, as at the end of
    the crossed-dial tests, then fails the test from the loop's exception
    handler and leaks the accepted socket.  Apply the upstream guard (leave
    the connection to the next accept) where the running Python lacks it."""
    loop_cls: Any = asyncio.selector_events.BaseSelectorEventLoop
    original = loop_cls._sock_accept
    if getattr(original, "_snakemq_guarded", False):
        return

    @functools.wraps(original)
    def _sock_accept(self: Any, fut: Any, sock: Any) -> None:
        if fut.done():
            return
        original(self, fut, sock)

    _sock_accept._snakemq_guarded = True  # type: ignore[attr-defined]
    loop_cls._sock_accept = _sock_accept


_guard_sock_accept()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


from snakemq_proto.testing import postgres_fixtures  # noqa: E402

postgres, pg_url = postgres_fixtures()
