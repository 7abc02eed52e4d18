"""PiCIE (Cho et al., CVPR 2021): clustering with photometric invariance and geometric equivariance."""

__all__ = ["kmeans", "loss", "model"]
