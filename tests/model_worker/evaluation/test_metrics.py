"""The figures against hand-computed values."""

from __future__ import annotations

import math

import pytest

from model_worker.evaluation.metrics import (
    confusion_matrix,
    confusions,
    mcnemar_exact,
    per_label,
    top_k_accuracy,
)

LABELS = ("犬", "猫", "鳥")
TRUTHS = ["犬", "犬", "犬", "猫", "猫", "鳥", "鳥"]
RANKED = [
    ("犬", "猫", "鳥"),
    ("猫", "犬", "鳥"),  # 犬 → 猫
    ("犬", "鳥", "猫"),
    ("猫", "犬", "鳥"),
    ("犬", "鳥", "猫"),  # 猫 → 犬
    ("猫", "鳥", "犬"),  # 鳥 → 猫
    None,  # unreadable: left out of every figure
]


def test_top_k_accuracy_leaves_unanswered_pictures_out():
    assert top_k_accuracy(TRUTHS, RANKED, 1) == pytest.approx(3 / 6)
    assert top_k_accuracy(TRUTHS, RANKED, 2) == pytest.approx(5 / 6)  # picture 4 (猫) ranks 猫 last
    assert top_k_accuracy(TRUTHS, RANKED, 3) == 1.0
    assert top_k_accuracy(["犬"], [None], 1) is None
    with pytest.raises(ValueError):
        top_k_accuracy(TRUTHS, RANKED[:-1], 1)


def test_per_label_precision_recall_support():
    rows = {f.label: f for f in per_label(TRUTHS, RANKED, LABELS)}
    # 犬: predicted for pictures 0, 2, 4 (2 right); 3 pictures of 犬, 2 found
    assert rows["犬"].precision == pytest.approx(2 / 3) and rows["犬"].recall == pytest.approx(2 / 3)
    assert rows["犬"].support == 3 and rows["犬"].predicted == 3
    # 猫: predicted for 1, 3, 5 (1 right); 2 pictures, 1 found
    assert rows["猫"].precision == pytest.approx(1 / 3) and rows["猫"].recall == pytest.approx(1 / 2)
    # 鳥: never predicted; one answered picture (the other is unreadable), not found
    assert rows["鳥"].precision is None and rows["鳥"].recall == 0 and rows["鳥"].support == 1
    assert [f.label for f in per_label(TRUTHS, RANKED, LABELS)] == list(LABELS)


def test_confusions_most_frequent_first_and_the_matrix():
    truths = TRUTHS + ["犬"]
    ranked = RANKED + [("猫", "犬", "鳥")]
    assert confusions(truths, ranked) == [("犬", "猫", 2), ("猫", "犬", 1), ("鳥", "猫", 1)]
    assert confusion_matrix(truths, ranked, LABELS) == [[2, 2, 0], [1, 1, 0], [0, 1, 0]]


def test_mcnemar_exact_on_known_tables():
    # discordant b = 1 (only A right), c = 5 (only B right): p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14/64
    a = [True] * 3 + [True] + [False] * 5 + [False] * 2
    b = [True] * 3 + [False] + [True] * 5 + [False] * 2
    test = mcnemar_exact(a, b)
    assert (test.only_a, test.only_b) == (1, 5)
    assert test.p_value == pytest.approx(14 / 64)
    # symmetric, and capped at 1 when the discordant counts are equal
    assert mcnemar_exact(b, a).p_value == pytest.approx(14 / 64)
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0
    assert mcnemar_exact([True, True], [True, True]).p_value == 1.0
    # a classic textbook table: b = 0, c = 10 → p = 2 / 2^10
    assert mcnemar_exact([False] * 10, [True] * 10).p_value == pytest.approx(2 / 1024)
    # large counts stay exact (integers), no overflow: b = 400, c = 600
    big = mcnemar_exact([True] * 400 + [False] * 600, [False] * 400 + [True] * 600)
    expected = 2 * sum(math.comb(1000, i) for i in range(401)) / 2**1000
    assert big.p_value == pytest.approx(expected) and 0 < big.p_value < 1e-9
