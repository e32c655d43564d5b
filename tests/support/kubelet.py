"""Test fixtures: see module docstring once written."""
