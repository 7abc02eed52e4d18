"""geoseg: label-free segmentation of large aerial orthophotos with IIC."""

__version__ = "0.1.0"
