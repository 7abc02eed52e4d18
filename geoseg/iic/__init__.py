"""Invariant Information Clustering (Ji, Henriques, Vedaldi 2019) for dense segmentation."""
