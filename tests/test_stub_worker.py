"""The torch-free stand-in worker the supervisor tests run (tests/support/stub_worker.py): its rule names
the pictures the tests draw, it ranks labels like a model would, and it stays free of torch."""

from __future__ import annotations

import io
import random
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.support import shapes
from tests.support.stub_worker import predict, rank


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_rule_names_every_shape_the_tests_draw(fmt):
    for label in shapes.CLASSES:
        for seed, size in enumerate([(120, 120), (160, 120), (200, 150), (320, 240), (1600, 1200)]):
            data = shapes.encode(shapes.draw(label, size, random.Random(seed)), fmt)
            assert predict(Image.open(io.BytesIO(data))) == label, (label, size, fmt)


def test_a_picture_without_a_coloured_shape_has_no_class():
    assert predict(Image.new("RGB", (64, 48), (230, 230, 225))) is None


def test_ranking_shares_sum_to_one_and_only_the_class_itself_fits():
    labels = (*shapes.CLASSES, "犬", "黄色い三角")
    top = rank("青い四角", labels, top_k=len(labels), threshold=0.01)
    assert [s.label for s in top[:3]] == ["青い四角", "青い丸", "赤い四角"]
    assert abs(sum(s.score for s in top) - 1) < 1e-9
    assert [s.fits for s in top] == [True] + [False] * (len(labels) - 1)
    assert [s.label for s in rank("青い四角", labels, top_k=3, threshold=0.01)] == [s.label for s in top[:3]]
    none = rank(None, ("赤い丸", "黄色い三角"), top_k=3, threshold=0.01)
    assert [s.label for s in none] == ["赤い丸", "黄色い三角"] and not any(s.fits for s in none)


def test_the_stub_worker_never_imports_torch():
    code = (
        "import sys, tests.support.stub_worker, tests.support.stub_bot;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
