"""Invariant Information Clustering (Ji, Henriques, Vedaldi 2019) for dense segmentation."""

__all__ = ["data", "distributed", "loss", "model", "transforms"]
