"""Compression building blocks of the compressed scene formats (SOG, ...).

:func:`kmeans` clusters vectors (the higher SH of a model into a palette); :func:`fit_codebook`
and :func:`quantize_to_codebook` fit and apply a 1D scalar codebook (256 levels by default);
:mod:`scene3d.compress.plas` sorts Gaussians into a self-organising 2D grid and provides the
grid-smoothness loss used in training (``--compress-grid``).
"""

from scene3d.compress.kmeans import codebook_error, fit_codebook, kmeans, quantize_to_codebook

__all__ = ["codebook_error", "fit_codebook", "kmeans", "quantize_to_codebook"]
