"""Model presets and the embedded `tiny` models."""
