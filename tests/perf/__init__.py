"""Benchmarks: ``make bench`` runs ``python -m tests.perf``; pytest collects only test_*.py."""
