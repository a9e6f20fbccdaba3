"""Label-set embeddings, computed once and reused for every image.

Each label is embedded under every prompt template; the normalised embeddings are
averaged and normalised again (prompt ensembling). Two LRU levels: single labels
(so adding one label to a set encodes only that label) and whole sets (so a hit
costs one dictionary lookup, no stacking).
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
    def __init__(self, encode_texts: Callable[[list[str]], torch.Tensor], *, model_key: str,
                 templates: Sequence[str], max_labels: int = 8192, max_sets: int = 512):
        self._encode = encode_texts
        self._key = (model_key, tuple(templates))
        self._templates = tuple(templates)
        self._labels = _LRU(max_labels)
        self._sets = _LRU(max_sets)
        self._lock = threading.Lock()
        self.texts_encoded = 0   # how many prompt texts went through the text tower (for tests and stats)
        self.set_hits = 0
        self.set_misses = 0

    def get(self, labels: tuple[str, ...]) -> torch.Tensor:
        """L × D normalised embeddings for `labels`, in order."""
        with self._lock:
            key = (self._key, labels)
            cached = self._sets.get_fresh(key)
            if cached is not None:
                self.set_hits += 1
                return cached
            self.set_misses += 1
            vectors = {l: self._labels.get_fresh((self._key, l)) for l in dict.fromkeys(labels)}
            missing = [l for l, v in vectors.items() if v is None]
            if missing:
                vectors.update(self._encode_labels(missing))
            stacked = torch.stack([vectors[l] for l in labels])
            self._sets.put(key, stacked)
            return stacked

    def _encode_labels(self, labels: list[str]) -> dict[str, torch.Tensor]:
        texts = [render(t, l) for l in labels for t in self._templates]
        emb = self._encode(texts).view(len(labels), len(self._templates), -1).mean(dim=1)
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.texts_encoded += len(texts)
        for label, vector in zip(labels, emb):
            self._labels.put((self._key, label), vector)
        return dict(zip(labels, emb))
