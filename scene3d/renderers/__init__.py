"""Model-free compute kernels: ``gaussians`` rasterizes given Gaussian tensors into images."""
