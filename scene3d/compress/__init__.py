"""Compression of trained Gaussian models (attribute grids that compress well as images)."""
