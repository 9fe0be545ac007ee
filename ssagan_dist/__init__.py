"""ssagan-dist: distributed training of single-image-to-video GANs on Ray Train."""

__version__ = "0.1.0"
