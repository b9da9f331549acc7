from __future__ import annotations

from collections.abc import Iterator

import pytest
from snakemq_proto.testing import TestPostgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPostgres]:
    """A real PostgreSQL server, started once for the session."""
    with TestPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def pg_url(postgres: TestPostgres) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres.new_database()
