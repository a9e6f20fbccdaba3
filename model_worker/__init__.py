"""The model worker: image bytes + a label set in, the best-matching labels out.

Importing this package is cheap (no torch); the heavy modules load on use.
"""
