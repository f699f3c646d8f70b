"""Throughput and memory benchmarks of dtd and the property checks: ``python -m benchmarks``."""
