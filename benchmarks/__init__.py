"""Benchmarks that print side-by-side figures (``python -m pseudostream.benchmarks.bench``, ``make bench``)."""
