"""Local-global mutual information (LGMI, Harb 2019): network and loss. The training step
is geoseg.methods.lgmi."""

__all__ = ["loss", "model"]
