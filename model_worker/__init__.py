"""The model worker: image bytes + a label set in, the best-matching labels out.

image/ (bytes → pixels), model/ (adapters, loading, label cache, engine), serving/ (the
pipe loop and the Redis consumer), devtools/ (bench, random checkpoints, fault injection).
Importing this package is cheap (no torch); the heavy modules load on use.
"""
