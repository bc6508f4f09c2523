"""Throughput and kernel benchmarks (run from the repo root: `python -m benchmarks.decode`)."""
