"""Running the evaluation: each model's engine over the dataset, then (optionally) the prompt-template variants.

The pictures go through `Engine.stream` exactly as the bot's go through the worker (same decoding, preprocessing,
templates and label cache), against the whole label set. The image embeddings come back with the same answers
(embed=True), so comparing template variants costs only the text tower: the pictures are encoded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from model_worker.evaluation.dataset import Dataset
from model_worker.evaluation.metrics import top_k_accuracy
from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode, unpack_embedding
from wakeru.templates import TEMPLATE_SETS

if TYPE_CHECKING:
    from model_worker.model.adapters import Adapter
    from model_worker.model.engine import Engine

TOP_K = 5
Progress = Callable[[int, int], None]  # (pictures answered, pictures in all)


@dataclass(frozen=True)
class Failure:
    path: str
    code: str  # an ErrorCode value
    message: str


@dataclass(frozen=True)
class VariantResult:
    name: str
    templates: tuple[str, ...]
    top1: float | None
    top5: float | None


@dataclass
class ModelRun:
    model: str
    ranked: list[tuple[str, ...] | None]  # per dataset item: labels best first (top_k of them); None: no answer
    failures: list[Failure]
    seconds: float  # reading, decoding and the model, from the first request to the last answer
    embeddings: np.ndarray | None = None  # image embeddings, one row per index of `embedded`, N × D
    embedded: list[int] = field(default_factory=list)  # item indices of the embeddings' rows, ascending
    variants: list[VariantResult] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(r is not None for r in self.ranked)

    @property
    def images_per_second(self) -> float | None:
        return len(self.ranked) / self.seconds if self.seconds > 0 else None


def _read(path: str, max_bytes: int) -> bytes | Failure:
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)  # past the limit by one byte: the engine answers TOO_LARGE
    except OSError as e:
        return Failure(path, ErrorCode.UNREADABLE.value, f"cannot read {path}: {e.strerror or e}")


def classify_dataset(engine: Engine, dataset: Dataset, model: str, progress: Progress | None = None) -> ModelRun:
    """Every item against every label, top min(5, labels) and its embedding, through the engine's bounded stream."""
    labels = dataset.labels
    top_k = min(TOP_K, len(labels))
    max_bytes = engine.config.images.max_bytes
    total = len(dataset.items)
    ranked: list[tuple[str, ...] | None] = [None] * total
    failures: dict[int, Failure] = {}  # item index → why it got no answer
    vectors: dict[int, tuple[float, ...]] = {}

    def requests() -> Iterator[ClassifyRequest]:
        for i, item in enumerate(dataset.items):
            data = _read(str(item.path), max_bytes)
            if isinstance(data, Failure):  # answered here: the engine never sees it
                failures[i] = data
                continue
            # only a window of files is held in memory at once: the stream pulls from this generator
            yield ClassifyRequest(id=str(i), image=data, labels=labels, top_k=top_k, embed=True)

    started = time.perf_counter()
    # a window of twice a batch keeps the model busy while the next batch decodes, memory bounded
    answered = 0
    for result in engine.stream(requests(), window=2 * engine.max_batch):
        _record(result, dataset, ranked, failures, vectors)
        answered += result.error is None
        if progress is not None:
            progress(answered + len(failures), total)
    seconds = time.perf_counter() - started
    embedded = sorted(vectors)
    embeddings = np.array([vectors[i] for i in embedded], dtype=np.float32) if vectors else None
    return ModelRun(model, ranked, [failures[i] for i in sorted(failures)], seconds, embeddings, embedded)


def _record(
    result: ClassifyResult,
    dataset: Dataset,
    ranked: list[tuple[str, ...] | None],
    failures: dict[int, Failure],
    vectors: dict[int, tuple[float, ...]],
) -> None:
    i = int(result.id)
    path = str(dataset.items[i].path)
    if result.error is not None:
        failures[i] = Failure(path, result.error.value, result.message or "")
        return
    ranked[i] = tuple(s.label for s in result.top)
    if result.embedding is not None:
        vectors[i] = unpack_embedding(result.embedding)


def template_variants(
    configured: Sequence[str], sets: Mapping[str, tuple[str, ...]] = TEMPLATE_SETS
) -> list[tuple[str, tuple[str, ...]]]:
    """(name, templates): the configured ensemble, the named sets (model.templates' names), each configured
    template alone, and the bare label."""
    variants = [("configured ensemble", tuple(configured))]
    variants.extend((f"set {name}", templates) for name, templates in sets.items())
    if len(configured) > 1:  # with one template, "alone" is the ensemble again
        variants.extend((f"alone {template}", (template,)) for template in configured)
    variants.append(("bare label", ("{}",)))
    return variants


def score_variants(
    adapter: Adapter, run: ModelRun, dataset: Dataset, variants: Sequence[tuple[str, tuple[str, ...]]]
) -> list[VariantResult]:
    """Top-1/top-5 of each variant: labels embedded by the label cache's own ensemble rule, ranked by cosine with the
    image embeddings the engine returned (the engine's scores are monotonic in the cosine, so the ranking is the same)."""
    from model_worker.model.label_cache import LabelEmbeddingCache

    if run.embeddings is None or not run.embedded:
        return [VariantResult(name, templates, None, None) for name, templates in variants]
    labels = dataset.labels
    truths = [dataset.items[i].label for i in run.embedded]
    k = min(TOP_K, len(labels))
    results = []
    for name, templates in variants:
        # a throwaway cache per variant: `ensemble` is exactly how the engine embeds a label under its templates
        cache = LabelEmbeddingCache(adapter.encode_texts, model_key=adapter.cache_key, templates=templates)
        label_emb = cache.ensemble(list(labels)).float().cpu().numpy()
        cosine = run.embeddings @ label_emb.T
        order = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
        ranked = [tuple(labels[j] for j in row) for row in order]
        results.append(
            VariantResult(name, templates, top_k_accuracy(truths, ranked, 1), top_k_accuracy(truths, ranked, TOP_K))
        )
    return results


def evaluate(
    configs: Sequence[tuple[str, Config]],
    dataset: Dataset,
    *,
    load: Callable[[Config], Engine],
    templates: bool = False,
    progress: Callable[[str], Progress | None] | None = None,
) -> list[ModelRun]:
    """Each (name, config) in turn: load its engine (`load`), classify the dataset, compare the template variants,
    close the engine before the next model loads (one model in memory at a time)."""
    runs = []
    for name, config in configs:
        engine = load(config)
        try:
            run = classify_dataset(engine, dataset, name, progress(name) if progress else None)
        finally:
            engine.close()
        if templates:
            run.variants = score_variants(
                engine.adapter, run, dataset, template_variants(engine.config.model.templates)
            )
        runs.append(run)
    return runs
