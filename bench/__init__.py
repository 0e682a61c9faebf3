"""Benchmarks: synthetic workloads and ratios against baselines. Not part of the test suite."""
