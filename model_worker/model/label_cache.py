"""Label-set embeddings, computed once and reused for every image.

Each label is embedded under every prompt template; the normalised embeddings are
averaged and normalised again (prompt ensembling). Two LRU levels: single labels
(so adding one label to a set encodes only that label) and whole sets (so a hit
costs one dictionary lookup, no stacking).

`get` encodes what is missing at once. The engine uses `lookup` and `known` instead, and
`encode` (then `store_set`) a few labels at a time between image batches, so a new
100-label set never holds up the images whose labels are already known.

`ensemble` embeds texts by exactly the same rule (every template, averaged, normalised) without
keeping them: search queries are embedded like labels but must not crowd the labels out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch


def render(template: str, label: str) -> str:
    # replace, not str.format: labels may contain braces
    return template.replace("{}", label, 1)


class _LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class LabelEmbeddingCache:
    def __init__(
        self,
        encode_texts: Callable[[list[str]], torch.Tensor],
        *,
        model_key: str,
        templates: Sequence[str],
        max_labels: int = 8192,
        max_sets: int = 512,
    ):
        self._encode = encode_texts
        self._key = (model_key, tuple(templates))
        self._templates = tuple(templates)
        self._labels = _LRU(max_labels)
        self._sets = _LRU(max_sets)
        self._lock = threading.Lock()
        self.texts_encoded = 0  # how many prompt texts went through the text tower (for tests and stats)
        self.set_hits = 0
        self.set_misses = 0

    def get(self, labels: tuple[str, ...]) -> torch.Tensor:
        """L × D normalised embeddings for `labels`, in order; encodes what is missing now."""
        with self._lock:
            found = self._lookup(labels)
            if found is not None:
                return found
            vectors = {l: self._labels.get_fresh((self._key, l)) for l in dict.fromkeys(labels)}
            vectors.update(self._encode_labels([l for l, v in vectors.items() if v is None]))
            return self._store_set(labels, vectors)

    def lookup(self, labels: tuple[str, ...]) -> torch.Tensor | None:
        """Like `get`, but None instead of encoding when a label is not known yet."""
        with self._lock:
            return self._lookup(labels)

    def known(self, labels: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The labels of the set whose embeddings are cached already."""
        with self._lock:
            found = {l: self._labels.get_fresh((self._key, l)) for l in dict.fromkeys(labels)}
        return {l: v for l, v in found.items() if v is not None}

    def encode(self, labels: list[str]) -> dict[str, torch.Tensor]:
        """Put these labels through the text tower (all templates), keep and return their embeddings."""
        with self._lock:
            return self._encode_labels(labels) if labels else {}

    def ensemble(self, texts: list[str]) -> torch.Tensor:
        """T × D: each text embedded exactly as a label is (every template, averaged, normalised),
        but not kept in the cache (the engine keeps its own small LRU of search queries)."""
        if not texts:
            raise ValueError("no texts to embed")
        with self._lock:
            return self._ensemble(texts)

    def store_set(self, labels: tuple[str, ...], vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stack a set from embeddings gathered piecewise (`known` and `encode`) and keep it."""
        with self._lock:
            return self._store_set(labels, vectors)

    def _store_set(self, labels: tuple[str, ...], vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        self.set_misses += 1
        stacked = torch.stack([vectors[l] for l in labels])
        self._sets.put((self._key, labels), stacked)
        return stacked

    def _lookup(self, labels: tuple[str, ...]) -> torch.Tensor | None:
        cached = self._sets.get_fresh((self._key, labels))
        if cached is not None:
            self.set_hits += 1
            return cached
        vectors = {l: self._labels.get_fresh((self._key, l)) for l in dict.fromkeys(labels)}
        if any(v is None for v in vectors.values()):
            return None
        return self._store_set(labels, vectors)

    def _ensemble(self, labels: list[str]) -> torch.Tensor:
        texts = [render(t, l) for l in labels for t in self._templates]
        emb = self._encode(texts).view(len(labels), len(self._templates), -1).mean(dim=1)
        self.texts_encoded += len(texts)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _encode_labels(self, labels: list[str]) -> dict[str, torch.Tensor]:
        emb = self._ensemble(labels)
        for label, vector in zip(labels, emb):
            self._labels.put((self._key, label), vector)
        return dict(zip(labels, emb))
