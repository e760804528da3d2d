"""Local images: the catalog of images and layers (catalog.py), unpacking layers (layers.py), and
pulling from registries (registry.py)."""

from sandboxd.runtimes.local.images.catalog import Image, ImageStore

__all__ = ["Image", "ImageStore"]
