"""Benchmarks: ``python -m tests.benchmarks [NAME ...] [--quick]`` runs them (not part of pytest)."""
