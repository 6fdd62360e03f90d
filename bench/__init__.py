"""Benchmarks (``python -m bench.<name>``): throughput and latency, measured, never asserted.

See ``bench/README.md`` for what each one measures and how to read its output.
"""
