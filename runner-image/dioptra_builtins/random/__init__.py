"""Random number plugins: one seeded generator per flow, so runs are reproducible."""
