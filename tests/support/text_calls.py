"""Counting what goes through a model's text tower."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def text_tower_calls(adapter) -> Iterator[list[int]]:
    """The number of texts in each text-tower call while the block runs (make the engine inside it:
    the label cache takes the adapter's encode_texts when it is built)."""
    calls: list[int] = []
    original = adapter.encode_texts

    def counting(texts):
        calls.append(len(texts))
        return original(texts)

    adapter.encode_texts = counting
    try:
        yield calls
    finally:
        adapter.encode_texts = original
