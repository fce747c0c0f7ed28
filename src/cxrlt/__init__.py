"""cxrlt: long-tailed and zero-shot chest X-ray classification, from training to Triton serving."""

__version__ = "0.1.0"
