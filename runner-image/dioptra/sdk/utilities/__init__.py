"""Helpers for entry-point scripts."""
