"""Cross-instance representation similarity (CIRS, Bishop 2020): network, straight-through
argmax and loss. The training step is geoseg.methods.cirs."""

__all__ = ["argmax", "loss", "model"]
