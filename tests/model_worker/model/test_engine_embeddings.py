"""Protocol 4 in the engine: the image embedding returned with a classification (same forward pass),
embed-only requests (index backfill) and search queries embedded by the labels' template rule, with
the tiny trained model (tests/support/train_tiny.py), so "the query ranks its pictures first" means
something."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from model_worker.image.decode import decode_image
from model_worker.model.adapters import load_adapter
from model_worker.model.engine import Engine
from tests.conftest import make_config
from tests.support.shapes import CLASSES, draw, encode
from wakeru.protocol import ClassifyRequest, ErrorCode, model_key, unpack_embedding


def _pictures(seed: int, per_class: int = 2) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [
        (label, encode(draw(label, (rng.randint(120, 400), rng.randint(120, 400)), rng), "PNG"))
        for _ in range(per_class)
        for label in CLASSES
    ]


@pytest.fixture(scope="module")
def adapter(trained_model):
    return load_adapter(make_config(trained_model, model={"dtype": "float32"}).model)


@pytest.fixture(scope="module")
def engine(adapter):
    config = make_config(adapter.model_id, model={"dtype": "float32"}, worker={"max_batch": 8, "max_wait_ms": 500})
    with Engine(adapter, config) as engine:
        yield engine


def _vector(data: bytes | None, size: int) -> np.ndarray:
    assert data is not None and len(data) == size * 4
    return np.array(unpack_embedding(data), dtype=np.float32)


def _alone(engine: Engine, image: bytes) -> np.ndarray:
    """The image's embedding computed on its own, outside the engine: batch of one."""
    adapter = engine.adapter
    prepared = adapter.preprocessor.prepare(decode_image(image, engine.limits, adapter.preprocessor.draft_size))
    inputs = adapter.preprocessor.collate([prepared], adapter.device, adapter.dtype)
    return adapter.encode_images(inputs)[0].float().cpu().numpy()


def test_embed_returns_the_images_embedding_from_the_same_batch_and_leaves_the_scores_alone(engine):
    size = engine.adapter.embedding_size
    pictures = _pictures(seed=5)
    plain = engine.classify([ClassifyRequest(id=f"p{i}", image=d, labels=CLASSES) for i, (_, d) in enumerate(pictures)])
    batches = engine.stats.batches
    embedded = engine.classify(
        [ClassifyRequest(id=f"e{i}", image=d, labels=CLASSES, embed=True) for i, (_, d) in enumerate(pictures)]
    )
    assert engine.stats.batches - batches <= len(pictures)  # one forward pass per batch, no second one
    assert max(r.timings.batch_size for r in embedded) > 1  # batched like any other request
    for (_, data), a, b in zip(pictures, plain, embedded):
        assert a.ok and b.ok, (a.message, b.message)
        assert a.embedding is None and a.embedding_model is None  # not asked for: not sent
        assert [s.label for s in b.top] == [s.label for s in a.top]
        assert [s.score for s in b.top] == pytest.approx([s.score for s in a.top], abs=1e-6)
        assert [s.match for s in b.top] == pytest.approx([s.match for s in a.top], abs=1e-6)
        vector = _vector(b.embedding, size)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(vector, _alone(engine, data), atol=1e-5)
        assert b.embedding_model == engine.model_key == model_key(engine.config.model.id, engine.config.model.revision)


def test_embed_only_requests_skip_the_labels_and_give_the_same_embedding(engine):
    pictures = _pictures(seed=6, per_class=1)
    with_labels = engine.classify(
        [ClassifyRequest(id=f"l{i}", image=d, labels=CLASSES, embed=True) for i, (_, d) in enumerate(pictures)]
    )
    hits = engine.cache.set_hits + engine.cache.set_misses
    # mixed in one batch with classifications: each gets what it asked for
    mixed = engine.classify(
        [
            ClassifyRequest(id=f"o{i}", image=d, labels=() if i % 2 == 0 else CLASSES, embed=True)
            for i, (_, d) in enumerate(pictures)
        ]
    )
    for i, (a, b) in enumerate(zip(with_labels, mixed)):
        assert b.ok, b.message
        assert (b.top == ()) if i % 2 == 0 else ([s.label for s in b.top] == [s.label for s in a.top])
        np.testing.assert_allclose(
            _vector(b.embedding, engine.adapter.embedding_size),
            _vector(a.embedding, engine.adapter.embedding_size),
            atol=1e-5,
        )
    assert engine.cache.set_hits + engine.cache.set_misses - hits <= len(pictures) // 2 + 1  # no lookups for ()
    (label, data), *_ = pictures
    alone = engine.submit(ClassifyRequest(id="only", image=data, labels=(), embed=True)).result(timeout=60)
    assert alone.ok and alone.top == () and alone.embedding_model == engine.model_key
    np.testing.assert_allclose(_vector(alone.embedding, engine.adapter.embedding_size), _alone(engine, data), atol=1e-5)


def test_a_query_is_embedded_exactly_like_a_label_but_kept_out_of_the_label_cache(engine):
    size = engine.adapter.embedding_size
    text = "紫の星"  # a label no set has used: the query must go through the text tower
    encoded = engine.cache.texts_encoded
    result = engine.submit(ClassifyRequest(id="q", image=b"", labels=(), query=f"  {text} ")).result(timeout=60)
    assert result.ok, result.message
    assert result.top == () and result.embedding_model == engine.model_key
    assert engine.cache.texts_encoded - encoded == len(engine.config.model.templates)  # every template, once
    assert engine.cache.known((text,)) == {}  # the label cache did not take it
    vector = _vector(result.embedding, size)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    as_label = engine.cache.get((text,))[0].float().cpu().numpy()  # the template ensemble of a one-label set
    np.testing.assert_allclose(vector, as_label, atol=1e-5)
    # asked again: from the query cache, no text-tower work; the label's words: the label's vector
    encoded = engine.cache.texts_encoded
    again = engine.classify(
        [
            ClassifyRequest(id="q2", image=b"", labels=(), query=text),
            ClassifyRequest(id="q3", image=b"", labels=(), query=CLASSES[0]),
        ]
    )
    assert engine.cache.texts_encoded == encoded
    assert again[0].embedding == result.embedding
    np.testing.assert_allclose(
        _vector(again[1].embedding, size), engine.cache.get((CLASSES[0],))[0].cpu().numpy(), atol=1e-5
    )


def test_the_query_for_a_labels_words_ranks_its_pictures_first(engine):
    size = engine.adapter.embedding_size
    pictures = _pictures(seed=11, per_class=3)
    images = engine.classify(
        [ClassifyRequest(id=f"i{i}", image=d, labels=(), embed=True) for i, (_, d) in enumerate(pictures)]
    )
    matrix = np.stack([_vector(r.embedding, size) for r in images])
    truth = np.array([label for label, _ in pictures])
    queries = engine.classify([ClassifyRequest(id=f"q-{c}", image=b"", labels=(), query=c) for c in CLASSES])
    for label, query in zip(CLASSES, queries):
        assert query.ok, query.message
        cosine = matrix @ _vector(query.embedding, size)
        assert truth[int(np.argmax(cosine))] == label, label
        assert cosine[truth == label].mean() > cosine[truth != label].max() - 0.05, label


@pytest.mark.parametrize(
    "fields, text",
    [
        (dict(image=b"\x89PNG", labels=(), query="犬"), "without an image"),
        (dict(image=b"", labels=("犬",), query="犬"), "without labels"),
        (dict(image=b"\x89PNG", labels=()), "no labels given"),
        (dict(image=b"", labels=(), query="x" * 2000), "limit is 1,000"),
        (dict(image=b"", labels=(), query=" \u200b "), "empty"),
        (dict(image=b"", labels=(), query="犬\x07"), "control characters"),
        (dict(image=b"", labels=(), query=42), "text"),
        (dict(image=b"\x89PNG", labels=(), embed="yes"), "true or false"),
    ],
)
def test_bad_embedding_requests_are_refused_and_the_engine_goes_on(engine, fields, text):
    result = engine.submit(ClassifyRequest(id="bad", **fields)).result(timeout=60)
    assert result.error is ErrorCode.BAD_REQUEST and text in result.message, result
    assert result.embedding is None
    label, data = _pictures(seed=1, per_class=1)[0]
    after = engine.classify(
        [
            ClassifyRequest(id="ok", image=data, labels=CLASSES, embed=True),
            ClassifyRequest(id="ok-q", image=b"", labels=(), query=label),
        ]
    )
    assert all(r.ok and r.embedding for r in after)
    assert engine.in_flight == 0


def test_a_query_past_its_deadline_is_not_embedded(engine):
    late = engine.submit(ClassifyRequest(id="late", image=b"", labels=(), query="遅い", deadline=time.time() - 1))
    assert late.result(timeout=60).error is ErrorCode.DEADLINE_EXCEEDED
    assert engine.in_flight == 0


def test_an_equals_sign_is_plain_text_in_queries_and_labels(engine):
    """The worker gets words: a query "E=mc2 の図", and label names (the bot keeps a label's emoji for its
    answers), among them those of sets stored before labels could carry emoji ("E=mc2")."""
    query = engine.submit(ClassifyRequest(id="q=", image=b"", labels=(), query="E=mc2 の図")).result(timeout=60)
    assert query.ok, query.message
    image = _pictures(seed=9, per_class=1)[0][1]
    (result,) = engine.classify([ClassifyRequest(id="old", image=image, labels=(*CLASSES, "E=mc2"), top_k=7)])
    assert result.ok, result.message
    assert "E=mc2" in [s.label for s in result.top] and result.top[0].label == CLASSES[0]
