"""Baselines the benchmarks compare against, written the way their users write them."""
