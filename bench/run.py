"""Benchmark harness (placeholder until the performance issue lands)."""

print("bench: not built yet")
