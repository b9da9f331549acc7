"""snakemq (under construction)."""
