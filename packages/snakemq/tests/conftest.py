from __future__ import annotations

from collections.abc import Iterator

import pytest
from snakemq_proto.testing import postgres_fixtures
from sync_helpers import Peer

postgres, pg_url = postgres_fixtures()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peers registered here are stopped and cleaned up after the test."""
    made: list[Peer] = []
    yield made
    errors = []
    for peer in made:
        try:
            peer.stop()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)
    assert not errors, errors
