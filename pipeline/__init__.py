"""synthcat: turn a product catalog into published, quality-gated image datasets."""

__version__ = "0.1.0"
