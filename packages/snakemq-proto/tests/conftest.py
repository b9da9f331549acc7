from __future__ import annotations

from snakemq_proto.testing import postgres_fixtures

postgres, pg_url = postgres_fixtures()
