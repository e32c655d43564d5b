"""acme's task plugins."""
