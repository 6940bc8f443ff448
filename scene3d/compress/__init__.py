"""Compression building blocks shared by the compressed scene formats (SOG, ...).

:func:`kmeans` clusters vectors (the higher SH of a model into a palette); :func:`fit_codebook`
and :func:`quantize_to_codebook` fit and apply a 1D scalar codebook (256 levels by default).
"""

from scene3d.compress.kmeans import codebook_error, fit_codebook, kmeans, quantize_to_codebook

__all__ = ["codebook_error", "fit_codebook", "kmeans", "quantize_to_codebook"]
