"""Dioptra SDK utilities kept for compatibility with Dioptra plugins and entry points."""
