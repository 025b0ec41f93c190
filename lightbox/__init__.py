"""lightbox: image scoring and tagging models from labeled data to a fast production endpoint."""

__version__ = "0.1.0"
