"""imgsearch: a local reverse image search daemon."""

__version__ = "0.1.0"
