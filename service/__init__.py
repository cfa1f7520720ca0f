"""segserve: dynamically batched image and video segmentation serving."""

__version__ = "0.1.0"
