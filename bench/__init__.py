"""Benchmarks of the whole system against a stack started with fresh data (``make bench``)."""
