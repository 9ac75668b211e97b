"""Benchmarks, not part of pytest: ``python -m tests.benchmarks [NAME ...] [--quick]``."""
