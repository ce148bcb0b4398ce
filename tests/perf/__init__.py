"""Benchmarks: ``make bench`` (``python -m tests.perf``). Not collected by pytest except test_*.py."""
