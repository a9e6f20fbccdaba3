import io
import threading
import time

import pytest
from PIL import Image

from model_worker.model.adapters import load_adapter
from model_worker.model.engine import Engine
from tests.conftest import make_config
from tests.support.hostile import corpus
from tests.support.text_calls import text_tower_calls
from wakeru.protocol import ClassifyRequest, ErrorCode

LABELS = ("犬", "猫", "象")


def png(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def adapter(checkpoints):
    # float32: results must not depend on which batch an image ran in
    return load_adapter(make_config(checkpoints["siglip"], model={"dtype": "float32"}).model)


def engine_for(adapter, **worker):
    return Engine(adapter, make_config(adapter.model_id, model={"dtype": "float32"}, worker=worker))


def test_requests_are_batched_up_to_max_batch(adapter):
    with engine_for(adapter, max_batch=4, max_wait_ms=2000) as engine:
        results = engine.classify(
            [ClassifyRequest(id=str(i), image=png((i * 20, 0, 0)), labels=LABELS) for i in range(12)]
        )
    assert [r.id for r in results] == [str(i) for i in range(12)]
    assert all(r.ok for r in results)
    assert sum(engine.stats.batch_sizes) == 12
    assert max(engine.stats.batch_sizes) == 4  # waited for the images still decoding, never more than 4
    assert all(r.timings.batch_size >= 1 and r.timings.total_ms >= r.timings.model_ms for r in results)


def test_a_lone_request_does_not_wait_for_company(adapter):
    with engine_for(adapter, max_batch=32, max_wait_ms=5000) as engine:
        start = time.perf_counter()
        result = engine.submit(ClassifyRequest(id="1", image=png(), labels=LABELS)).result(timeout=30)
        assert result.ok
        assert time.perf_counter() - start < 4  # nothing else was decoding, so no 5 s wait


def test_bad_images_fail_alone_and_good_ones_are_unaffected(adapter):
    hostile = corpus()
    good = png((10, 200, 10))
    with engine_for(adapter, max_batch=64, max_wait_ms=500) as engine:
        alone = engine.submit(ClassifyRequest(id="alone", image=good, labels=LABELS)).result()
        requests = [ClassifyRequest(id=name, image=data, labels=LABELS) for name, (data, _) in hostile.items()]
        requests.insert(5, ClassifyRequest(id="good", image=good, labels=LABELS))
        results = {r.id: r for r in engine.classify(requests)}
        for name, (_, code) in hostile.items():
            assert results[name].error == code, name
            assert results[name].message
        assert results["good"].ok
        assert [(s.label, round(s.score, 5)) for s in results["good"].top] == [
            (s.label, round(s.score, 5)) for s in alone.top
        ]
        assert engine.submit(ClassifyRequest(id="after", image=good, labels=LABELS)).result().ok
        assert engine.in_flight == 0


@pytest.mark.parametrize(
    "request_kwargs, code, text",
    [
        (dict(labels=()), ErrorCode.BAD_REQUEST, "no labels given"),  # without embed: nothing to do
        (dict(labels=("犬", "x" * 51)), ErrorCode.BAD_LABELS, "the limit is 50"),
        (dict(labels=tuple(f"l{i}" for i in range(101))), ErrorCode.BAD_LABELS, "the limit is 100"),
        (dict(labels="犬,猫"), ErrorCode.BAD_REQUEST, "list of strings"),
        (dict(top_k=0), ErrorCode.BAD_REQUEST, "top_k"),
        (dict(version=99), ErrorCode.BAD_REQUEST, "protocol version 99"),
        (dict(image="not bytes"), ErrorCode.BAD_REQUEST, "bytes"),
        (dict(deadline=time.time() - 1), ErrorCode.DEADLINE_EXCEEDED, "deadline"),
    ],
)
def test_bad_requests_get_specific_errors(adapter, request_kwargs, code, text):
    fields = dict(id="r", image=png(), labels=LABELS) | request_kwargs
    with engine_for(adapter) as engine:
        result = engine.submit(ClassifyRequest(**fields)).result(timeout=30)
        assert result.error == code and text in result.message
        assert engine.submit(ClassifyRequest(id="ok", image=png(), labels=LABELS)).result().ok


def test_labels_are_normalised_before_use(adapter):
    with engine_for(adapter) as engine:
        result = engine.submit(ClassifyRequest(id="1", image=png(), labels=(" 犬 ", "猫", "犬", ""), top_k=5)).result()
    assert sorted(s.label for s in result.top) == ["犬", "猫"]


def test_each_request_is_scored_against_its_own_label_set(adapter):
    with engine_for(adapter, max_batch=8, max_wait_ms=1000) as engine:
        results = engine.classify(
            [
                ClassifyRequest(id="a", image=png(), labels=("犬", "猫")),
                ClassifyRequest(id="b", image=png(), labels=("象", "鳥", "魚")),
                ClassifyRequest(id="c", image=png(), labels=("犬", "猫")),
            ]
        )
    assert {s.label for s in results[0].top} == {"犬", "猫"}
    assert {s.label for s in results[1].top} == {"象", "鳥", "魚"}
    assert [s.label for s in results[0].top] == [s.label for s in results[2].top]
    assert [s.score for s in results[0].top] == pytest.approx([s.score for s in results[2].top], abs=1e-6)


def test_full_queue_answers_busy_at_once(adapter, monkeypatch):
    gate = threading.Event()
    original = adapter.encode_images

    def blocked(inputs):
        gate.wait(30)
        return original(inputs)

    monkeypatch.setattr(adapter, "encode_images", blocked)
    with engine_for(adapter, queue_size=2, max_batch=1) as engine:
        first = [engine.submit(ClassifyRequest(id=str(i), image=png(), labels=LABELS)) for i in range(2)]
        start = time.perf_counter()
        busy = engine.submit(ClassifyRequest(id="busy", image=png(), labels=LABELS)).result(timeout=1)
        assert time.perf_counter() - start < 0.5
        assert busy.error == ErrorCode.QUEUE_FULL and "busy" in busy.message
        gate.set()
        assert all(f.result(timeout=30).ok for f in first)
        assert engine.submit(ClassifyRequest(id="later", image=png(), labels=LABELS)).result(timeout=30).ok
        assert engine.stats.refused_busy == 1


def test_stream_feeds_more_requests_than_the_queue_holds(adapter):
    with engine_for(adapter, queue_size=3, max_batch=2) as engine:
        results = list(engine.stream(ClassifyRequest(id=str(i), image=png(), labels=LABELS) for i in range(20)))
    assert [r.id for r in results] == [str(i) for i in range(20)]
    assert all(r.ok for r in results)


def test_a_failing_batch_is_retried_one_by_one(adapter, monkeypatch):
    original = adapter.encode_images
    failures = {"left": 2}

    def flaky(inputs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("device error")
        return original(inputs)

    monkeypatch.setattr(adapter, "encode_images", flaky)
    with engine_for(adapter, max_batch=8, max_wait_ms=2000) as engine:
        results = engine.classify([ClassifyRequest(id=str(i), image=png(), labels=LABELS) for i in range(3)])
        # the batch failed, then the first request retried alone failed too: only that one gets the
        # error (which one it is depends on which image finished decoding first)
        errors = [r.error for r in results]
        assert sorted(errors, key=str) == [ErrorCode.INTERNAL, None, None], errors
        assert "the model failed" in results[errors.index(ErrorCode.INTERNAL)].message
        assert engine.submit(ClassifyRequest(id="next", image=png(), labels=LABELS)).result().ok


def test_closed_engine_answers_unavailable(adapter):
    engine = engine_for(adapter)
    pending = engine.submit(ClassifyRequest(id="before", image=png(), labels=LABELS))
    engine.close()
    assert pending.result(timeout=30).ok  # accepted work is finished
    after = engine.submit(ClassifyRequest(id="after", image=png(), labels=LABELS)).result(timeout=1)
    assert after.error == ErrorCode.UNAVAILABLE


def test_a_bug_in_the_batcher_answers_instead_of_hanging(adapter, monkeypatch):
    with engine_for(adapter) as engine:
        original = engine._process
        calls = {"n": 0}

        def broken_once(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyError("bug")
            return original(batch)

        monkeypatch.setattr(engine, "_process", broken_once)
        first = engine.submit(ClassifyRequest(id="1", image=png(), labels=LABELS)).result(timeout=30)
        assert first.error == ErrorCode.INTERNAL
        assert engine.submit(ClassifyRequest(id="2", image=png(), labels=LABELS)).result(timeout=30).ok
        assert engine.in_flight == 0


def test_cancelled_requests_give_their_place_back(adapter, monkeypatch):
    import asyncio

    gate = threading.Event()
    original = adapter.encode_images
    monkeypatch.setattr(adapter, "encode_images", lambda inputs: (gate.wait(30), original(inputs))[1])
    with engine_for(adapter, queue_size=2, max_batch=1) as engine:
        running = engine.submit(ClassifyRequest(id="running", image=png(), labels=LABELS))
        waiting = engine.submit(ClassifyRequest(id="waiting", image=png(), labels=LABELS))
        assert waiting.cancel()  # e.g. the bot's deadline passed

        async def bot_timeout():  # what asyncio.wait_for does to the wrapped future
            future = engine.submit(ClassifyRequest(id="timed-out", image=png(), labels=LABELS))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(future), 0.05)

        asyncio.run(bot_timeout())  # its place was given back at once, so this one is accepted
        gate.set()
        assert running.result(timeout=30).ok
        deadline = time.time() + 10
        while engine.in_flight and time.time() < deadline:
            time.sleep(0.01)
        assert engine.in_flight == 0
        assert engine.stats.cancelled == 2
        # the queue is not leaking: it still takes queue_size requests
        assert all(
            f.result(timeout=30).ok
            for f in [engine.submit(ClassifyRequest(id=str(i), image=png(), labels=LABELS)) for i in range(2)]
        )


def test_close_does_not_hang_on_a_stuck_decode(adapter, monkeypatch):
    import model_worker.model.engine as engine_module

    release = threading.Event()
    real_decode = engine_module.decode_image

    def stuck_decode(data, *args, **kwargs):
        if data == b"stuck":
            release.wait(30)
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_image", stuck_decode)
    engine = engine_for(adapter, decode_threads=1)
    stuck = engine.submit(ClassifyRequest(id="stuck", image=b"stuck", labels=LABELS))
    queued = engine.submit(ClassifyRequest(id="queued", image=png(), labels=LABELS))
    start = time.perf_counter()
    engine.close(timeout=0.5)
    assert time.perf_counter() - start < 5
    assert stuck.result(timeout=1).error == ErrorCode.UNAVAILABLE
    assert queued.result(timeout=1).error == ErrorCode.UNAVAILABLE
    assert engine.in_flight == 0
    release.set()


def test_a_lone_request_is_not_delayed_by_its_own_decode(adapter, monkeypatch):
    """The job is counted as decoded before the batcher can see it, so the batcher never
    waits max_wait_ms for a decode that is already done."""
    import model_worker.model.engine as engine_module

    real_put = engine_module.queue.Queue.put

    def slow_put(self, item, *a, **k):  # a decode thread preempted right after handing over
        real_put(self, item, *a, **k)
        time.sleep(0.05)

    with engine_for(adapter, max_wait_ms=3000) as engine:
        monkeypatch.setattr(engine._ready, "put", lambda item, *a, **k: slow_put(engine._ready, item, *a, **k))
        start = time.perf_counter()
        assert engine.submit(ClassifyRequest(id="1", image=png(), labels=LABELS)).result(timeout=30).ok
        assert time.perf_counter() - start < 2.5


def test_a_new_label_set_is_encoded_between_image_batches_without_holding_them_up(adapter):
    """100 labels nobody asked for before: their request waits while the text tower works a step at a
    time, and images whose labels are known go on being classified in between."""
    with text_tower_calls(adapter) as calls, engine_for(adapter, max_batch=4, max_wait_ms=1) as engine:
        assert engine.submit(ClassifyRequest(id="warm", image=png(), labels=LABELS)).result().ok
        calls.clear()
        steps = engine.stats.text_steps
        fresh = tuple(f"新しいラベル{i}" for i in range(100))
        big = engine.submit(ClassifyRequest(id="big", image=png((0, 0, 200)), labels=fresh, top_k=5))
        known = [engine.submit(ClassifyRequest(id=str(i), image=png((i * 30, 90, 0)), labels=LABELS)) for i in range(6)]
        assert all(f.result(timeout=60).ok for f in known)
        result = big.result(timeout=60)
        assert result.ok and len(result.top) == 5 and {s.label for s in result.top} <= set(fresh)
        templates = len(engine.config.model.templates)
        # in steps of a few labels, never all 100 in one go; each label once
        assert max(calls) < 100 * templates and sum(calls) == 100 * templates, calls
        assert engine.stats.text_steps - steps == len(calls) > 1
        # and the same set again costs no text work at all
        calls.clear()
        assert engine.submit(ClassifyRequest(id="again", image=png(), labels=fresh)).result().ok and not calls
