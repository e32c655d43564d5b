"""Data preparation plugins: image folders in, image folders out."""
