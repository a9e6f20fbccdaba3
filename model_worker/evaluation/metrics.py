"""The figures of an evaluation, from true labels and ranked predictions: plain Python, no model, no numpy needed.

A prediction is the labels ranked best first (at least the top 5, or all labels when fewer); None for a picture
that got no answer (unreadable), which is left out of every figure and reported apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

Ranked = Sequence[str] | None


def _answered(truths: Sequence[str], ranked: Sequence[Ranked]) -> list[tuple[str, Sequence[str]]]:
    if len(truths) != len(ranked):
        raise ValueError(f"{len(truths)} true labels but {len(ranked)} predictions")
    return [(t, r) for t, r in zip(truths, ranked) if r]


def top_k_accuracy(truths: Sequence[str], ranked: Sequence[Ranked], k: int) -> float | None:
    """Share of the answered pictures whose true label is among the first k; None when none was answered."""
    pairs = _answered(truths, ranked)
    if not pairs:
        return None
    return sum(t in r[:k] for t, r in pairs) / len(pairs)


@dataclass(frozen=True)
class LabelFigures:
    label: str
    precision: float | None  # None: the model never predicted this label
    recall: float | None  # None: no picture of this label (support 0)
    support: int  # answered pictures of this label
    predicted: int  # answered pictures predicted as this label


def per_label(truths: Sequence[str], ranked: Sequence[Ranked], labels: Sequence[str]) -> list[LabelFigures]:
    """Top-1 precision and recall of each label, in the order of `labels`."""
    pairs = _answered(truths, ranked)
    support = Counter(t for t, _ in pairs)
    predicted = Counter(r[0] for _, r in pairs)
    correct = Counter(t for t, r in pairs if r[0] == t)
    return [
        LabelFigures(
            label,
            correct[label] / predicted[label] if predicted[label] else None,
            correct[label] / support[label] if support[label] else None,
            support[label],
            predicted[label],
        )
        for label in labels
    ]


def confusions(truths: Sequence[str], ranked: Sequence[Ranked]) -> list[tuple[str, str, int]]:
    """(true, predicted top-1, count) of the mistakes, most frequent first (ties: by true, then predicted label)."""
    counts = Counter((t, r[0]) for t, r in _answered(truths, ranked) if r[0] != t)
    return sorted(((t, p, n) for (t, p), n in counts.items()), key=lambda c: (-c[2], c[0], c[1]))


def confusion_matrix(truths: Sequence[str], ranked: Sequence[Ranked], labels: Sequence[str]) -> list[list[int]]:
    """rows: true label, columns: predicted top-1 label, both in the order of `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, r in _answered(truths, ranked):
        matrix[index[t]][index[r[0]]] += 1
    return matrix


@dataclass(frozen=True)
class McNemar:
    """Two models on the same pictures: only_a = pictures A got right and B wrong, only_b the reverse."""

    only_a: int
    only_b: int
    p_value: float  # two-sided exact: the binomial test of only_a against only_a + only_b at one half


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired outcomes: under "both models are as accurate", each discordant picture is
    equally likely to favour either, so min(only_a, only_b) is binomial(n, 1/2) with n discordant pictures."""
    if len(a_correct) != len(b_correct):
        raise ValueError("the two models must be scored on the same pictures")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))  # exact integers: no rounding on large n
    return McNemar(only_a, only_b, min(1.0, 2 * tail / 2**n))
