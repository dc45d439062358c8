"""Benchmarks: scripts that print measurements. Run them from the repository root as
modules (``python -m benchmarks.bench_rollout``); see docs/benchmarks.md."""
