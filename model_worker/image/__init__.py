"""Untrusted image bytes → pixels: sniff the format, decode within limits, preprocess for a model."""
