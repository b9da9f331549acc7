"""snakemq_anyio (under construction)."""
