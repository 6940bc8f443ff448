"""Benchmarks behind ``scene3d bench NAME`` (one module per benchmark, each with a ``main``)."""
