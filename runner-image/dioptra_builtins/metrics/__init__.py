"""Metric plugins: numbers that say how an experiment went, ready for ``status.results``."""
