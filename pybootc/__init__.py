"""pybootc: image-based OS updates from OCI container images, in Python."""

__version__ = "0.1.0"
