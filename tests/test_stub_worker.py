"""The torch-free stand-in worker the supervisor tests run (tests/support/stub_worker.py): its rule names
the pictures the tests draw, it ranks labels like a model would, and it stays free of torch."""

from __future__ import annotations

import io
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.support import shapes
from tests.support.stub_worker import ShapeModel, StubEngine, embed_image, embed_query, make_model_dir, predict, rank
from wakeru.protocol import ClassifyRequest, ErrorCode, unpack_embedding


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


def _vector(data: bytes | None) -> np.ndarray:
    assert data is not None
    return np.array(unpack_embedding(data))


def test_embeddings_are_deterministic_unit_vectors_that_a_search_can_use():
    pictures = {
        label: [shapes.encode(shapes.draw(label, (160, 120), random.Random(seed)), "PNG") for seed in range(2)]
        for label in shapes.CLASSES
    }
    vectors = {label: [_vector(embed_image(label, data, 32)) for data in datas] for label, datas in pictures.items()}
    for label, (a, b) in vectors.items():
        assert a.shape == (32,) and abs(np.linalg.norm(a) - 1) < 1e-6
        assert a @ b > 0.8  # two pictures of one class are close, not equal
        assert np.array_equal(a, _vector(embed_image(label, pictures[label][0], 32)))  # the same bytes: a repost
        query = _vector(embed_query(label, 32))
        assert abs(np.linalg.norm(query) - 1) < 1e-6
        others = [v @ query for other, vs in vectors.items() if other != label for v in vs]
        assert min(a @ query, b @ query) > max(others) + 0.3, label
    assert abs(np.linalg.norm(_vector(embed_image(None, b"blank", 32))) - 1) < 1e-6


def test_the_stand_in_engine_answers_embed_and_query_requests_like_the_real_one(stub_model):
    from tests.conftest import make_config

    config = make_config(stub_model, model={"revision": "r1"})
    engine = StubEngine(ShapeModel(make_model_dir(stub_model)), config)
    try:
        picture = shapes.encode(shapes.draw("赤い丸", (160, 120), random.Random(0)), "PNG")
        requests = [
            ClassifyRequest(id="both", image=picture, labels=shapes.CLASSES, embed=True),
            ClassifyRequest(id="alone", image=picture, labels=(), embed=True),
            ClassifyRequest(id="query", image=b"", labels=(), query=" 赤い丸 "),
            ClassifyRequest(id="plain", image=picture, labels=shapes.CLASSES),
            ClassifyRequest(id="bad", image=picture, labels=()),
            ClassifyRequest(id="bad-query", image=picture, labels=(), query="赤い丸"),
            ClassifyRequest(id="long", image=b"", labels=(), query="x" * 2000),
        ]
        both, alone, query, plain, bad, bad_query, long = [engine.submit(r).result(timeout=30) for r in requests]
        assert both.top[0].label == "赤い丸" and alone.top == () and query.top == ()
        assert both.embedding == alone.embedding == embed_image("赤い丸", picture, 32)
        assert query.embedding == embed_query("赤い丸", 32)
        assert {both.embedding_model, alone.embedding_model, query.embedding_model} == {f"{stub_model}@r1"}
        assert plain.embedding is None and plain.embedding_model is None
        assert {bad.error, bad_query.error, long.error} == {ErrorCode.BAD_REQUEST}
    finally:
        engine.close()
