"""Data layer: challenge file formats, image reading, preprocessing cache, splits, synthetic data, validation."""
