"""Serving loops: the local pipe (a child of the bot) and the Redis Streams consumer.

Torch-free at import: the bot imports `serving.pipe` to name its spawn target.
"""
