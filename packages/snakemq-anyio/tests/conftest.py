"""Every async test runs on asyncio and on trio."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


from snakemq_proto.testing import postgres_fixtures  # noqa: E402

postgres, pg_url = postgres_fixtures()
