"""The local transport and its supervisor.

The end-to-end runs (marked slow) spawn the real model worker with the tiny trained model: classify
and survive bad input, a killed worker restarted with its requests sent again, a bot process that
never imports torch. The supervisor's other scenarios (an image that kills the worker twice, deaths
while loading, backoff past the deadline, the hang watchdog, close while loading, a model that
cannot load) spawn the torch-free stand-in of tests/support/stub_worker.py, which runs the real pipe
end, decoder and fault injection around a rule-based "model", and starts in a fraction of the time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from bot.transport import Reservation
from bot.transport.local import LocalWorkerTransport
from tests.conftest import REPO, make_config
from tests.support import shapes
from tests.support.stub_worker import run_stub_worker
from wakeru.protocol import ClassifyRequest, ErrorCode, unpack_embedding


def _request(image: bytes, labels=shapes.CLASSES, deadline_s: float = 60) -> ClassifyRequest:
    return ClassifyRequest(id=uuid.uuid4().hex, image=image, labels=tuple(labels), deadline=time.time() + deadline_s)


def _arm_faults(monkeypatch, spec: str) -> None:
    """Fault injection in the worker the transport spawns (it inherits this environment)."""
    monkeypatch.setenv("WAKERU_FAULTS", spec)
    monkeypatch.setenv("WAKERU_ALLOW_FAULTS", "1")


def _shape(label: str, seed: int = 0) -> bytes:
    return shapes.encode(shapes.draw(label, (160, 120), random.Random(seed)), "PNG")


def _stub(config) -> LocalWorkerTransport:
    """The transport with the torch-free stand-in worker (tests/support/stub_worker.py)."""
    return LocalWorkerTransport(config, worker_target=run_stub_worker)


@pytest.mark.slow
async def test_worker_process_classifies_and_survives_bad_input(trained_model, monkeypatch):
    monkeypatch.setenv("WAKERU_FAULTS", "crash_label=💥")  # without WAKERU_ALLOW_FAULTS=1: ignored
    monkeypatch.delenv("WAKERU_ALLOW_FAULTS", raising=False)
    transport = LocalWorkerTransport(make_config(trained_model))
    await transport.start()
    try:
        # torch is still importing in the child: the image waits for the model instead of being refused
        assert transport.state == "starting"
        early = await transport.classify(_request(_shape("赤い丸"), labels=(*shapes.CLASSES, "💥")))
        assert early.ok and early.top[0].label == "赤い丸", early
        assert transport.ready.is_set() and transport.state == "ready", transport.failure
        assert early.timings.total_ms < 10_000  # it reached the worker once loaded, not by a retry
        assert transport.info.pid != os.getpid()
        # several at once: they share batches in the worker
        labels = list(shapes.CLASSES)
        results = await asyncio.gather(*(transport.classify(_request(_shape(lab, i))) for i, lab in enumerate(labels)))
        assert [r.top[0].label for r in results] == labels
        assert all(len(r.top) == 3 for r in results)
        bad = await transport.classify(_request(b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
        assert bad.error is ErrorCode.CORRUPT and bad.message
        again = await transport.classify(_request(_shape("青い丸", 99)))
        assert again.ok and again.top[0].label == "青い丸"
        expired = await transport.classify(_request(_shape("青い丸"), deadline_s=-1))
        assert expired.error is ErrorCode.DEADLINE_EXCEEDED
    finally:
        await transport.close()
    assert transport.state == "stopped"
    after = await transport.classify(_request(_shape("赤い丸")))
    assert after.error is ErrorCode.UNAVAILABLE


@pytest.mark.slow
async def test_embeddings_come_back_through_the_worker_process(trained_model):
    """Protocol 4 over the pipe: an embedding with a classification, an embedding alone, a query;
    tagged with the model key the worker reported in its Ready."""
    transport = LocalWorkerTransport(make_config(trained_model, model={"revision": None}))
    await transport.start()
    try:
        picture = _shape("赤い丸")
        both, alone, query = await asyncio.gather(
            transport.classify(dataclasses.replace(_request(picture), embed=True)),
            transport.classify(dataclasses.replace(_request(picture, labels=()), embed=True)),
            transport.classify(dataclasses.replace(_request(b"", labels=()), query="赤い丸")),
        )
        size = transport.info.embedding_size
        assert transport.info.revision == "" and transport.info.model_key == str(trained_model)
        for result in (both, alone, query):
            assert result.ok, result
            assert len(result.embedding) == size * 4 and result.embedding_model == transport.info.model_key
            assert math.isclose(math.hypot(*unpack_embedding(result.embedding)), 1.0, abs_tol=1e-5)
        assert both.top[0].label == "赤い丸" and alone.top == () and query.top == ()
        assert all(
            math.isclose(a, b, abs_tol=1e-5)
            for a, b in zip(unpack_embedding(both.embedding), unpack_embedding(alone.embedding))
        )
        assert transport.held_bytes == 0 and transport.in_flight == 0
        bad = await transport.classify(dataclasses.replace(_request(picture, labels=()), query="赤い丸"))
        assert bad.error is ErrorCode.BAD_REQUEST
    finally:
        await transport.close()


async def test_embeddings_come_back_from_the_stand_in_worker(stub_model):
    transport = _stub(make_config(stub_model))
    await transport.start()
    try:
        picture = _shape("青い四角")
        both, query, other = await asyncio.gather(
            transport.classify(dataclasses.replace(_request(picture), embed=True)),
            transport.classify(dataclasses.replace(_request(b"", labels=()), query="青い四角")),
            transport.classify(dataclasses.replace(_request(b"", labels=()), query="赤い丸")),
        )
        assert all(r.ok for r in (both, query, other)), (both, query, other)
        assert both.top[0].label == "青い四角" and query.top == ()
        image, text, wrong = (unpack_embedding(r.embedding) for r in (both, query, other))
        assert len(image) == transport.info.embedding_size and both.embedding_model == transport.info.model_key
        assert sum(a * b for a, b in zip(image, text)) > sum(a * b for a, b in zip(image, wrong)) + 0.5
    finally:
        await transport.close()


async def test_a_model_that_cannot_load_is_reported_and_answered_unavailable(tmp_path):
    transport = _stub(make_config(tmp_path / "no-such-model"))
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 120)
        assert transport.state == "failed"
        assert "no-such-model" in transport.failure
        result = await transport.classify(_request(_shape("赤い丸")))
        # members are told there is no model, not where the operator keeps it
        assert result.error is ErrorCode.UNAVAILABLE and "could not be loaded" in result.message
        assert "no-such-model" not in result.message and "/" not in result.message
    finally:
        await transport.close()


def _shorter_hang_margin(monkeypatch) -> None:
    """The watchdog's margin over worker.request_timeout_s is 5 s (bot.transport.local._HUNG_MARGIN_S);
    2 s here (a worker is hung after 1 s + 2 s of silence) makes the hang tests quicker, while a 1 s
    batch still fits well within it."""
    from bot.transport import local

    monkeypatch.setattr(local, "_HUNG_MARGIN_S", 2.0)


async def _ready(transport) -> None:
    await asyncio.wait_for(transport.ready.wait(), 120)
    assert transport.state == "ready", transport.failure


async def _until(predicate, timeout: float = 30, step: float = 0.02) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(step)
    return time.monotonic() - started


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_every_request_still_answered(trained_model, monkeypatch):
    _arm_faults(monkeypatch, "batch_delay_ms=400")  # each batch is slow: the kill lands mid-batch
    config = make_config(trained_model, worker={"restart_backoff_s": 0.2, "max_batch": 4})
    transport = LocalWorkerTransport(config)
    await transport.start()
    try:
        await _ready(transport)
        first_pid = transport.info.pid
        labels = list(shapes.CLASSES)
        waiting = [asyncio.ensure_future(transport.classify(_request(_shape(lab, i)))) for i, lab in enumerate(labels)]
        await asyncio.sleep(0.5)  # the first batch is in the model
        assert sum(not w.done() for w in waiting) >= 2  # some are in the worker when it dies
        os.kill(first_pid, signal.SIGKILL)
        noticed = await _until(lambda: transport.state != "ready", timeout=5)
        assert noticed < 2.0
        # a new image while the worker restarts waits for it, and is classified
        during = await transport.classify(_request(_shape("赤い丸")))
        assert during.ok and during.top[0].label == "赤い丸", during
        results = await asyncio.wait_for(asyncio.gather(*waiting), 120)
        assert [r.top[0].label if r.ok else r.error for r in results] == labels  # nothing lost, nothing mixed up
        assert transport.restarts == 1 and transport.state == "ready" and transport.info.pid != first_pid
        assert transport.in_flight == 0 and transport.held_bytes == 0
    finally:
        await transport.close()


async def test_an_image_that_kills_the_worker_twice_is_refused_not_looped(stub_model, monkeypatch):
    _arm_faults(monkeypatch, "crash_label=💥")
    config = make_config(stub_model, worker={"restart_backoff_s": 0.1})
    transport = _stub(config)
    await transport.start()
    try:
        await _ready(transport)
        innocent = [
            asyncio.ensure_future(transport.classify(_request(_shape(lab, i))))
            for i, lab in enumerate(shapes.CLASSES[:3])
        ]
        poison = await transport.classify(_request(_shape("赤い丸"), labels=(*shapes.CLASSES, "💥")))
        assert poison.error is ErrorCode.CRASHED and "twice" in poison.message
        assert [r.top[0].label for r in await asyncio.gather(*innocent)] == list(shapes.CLASSES[:3])
        assert transport.restarts == 2
        await _until(lambda: transport.state == "ready")
        after = await transport.classify(_request(_shape("青い丸", 3)))
        assert after.ok and after.top[0].label == "青い丸"
    finally:
        await transport.close()


async def test_a_worker_that_dies_while_loading_is_given_up_after_three_tries(tmp_path, monkeypatch, stub_model):
    # a model directory whose weights file is a named pipe nobody writes: loading blocks until killed
    model = tmp_path / "model"
    import shutil

    shutil.copytree(stub_model, model)
    weights = next(model.glob("*.safetensors"))
    weights.unlink()
    os.mkfifo(weights)
    config = make_config(model, worker={"restart_backoff_s": 0.05})
    transport = _stub(config)
    await transport.start()
    try:
        waiting = asyncio.ensure_future(transport.classify(_request(_shape("赤い丸"))))  # waits for the load
        for attempt in range(3):
            await _until(lambda: transport.state in ("starting", "restarting") and transport._worker.process.pid)
            pid = transport._worker.process.pid
            await _until(lambda: transport._worker.process.pid == pid and transport._worker.process.is_alive())
            await asyncio.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: transport._worker.process.pid != pid or transport.state == "failed", timeout=30)
        assert transport.state == "failed"
        assert "3 times while loading" in transport.failure and "SIGKILL" in transport.failure
        gave_up = await asyncio.wait_for(waiting, 5)  # the image that waited is told, not left hanging
        assert gave_up.error is ErrorCode.UNAVAILABLE and "could not be loaded" in gave_up.message
        result = await transport.classify(_request(_shape("赤い丸")))
        assert result.error is ErrorCode.UNAVAILABLE and "could not be loaded" in result.message
    finally:
        await transport.close()


async def test_a_worker_whose_next_restart_is_past_the_deadline_is_unavailable_at_once(stub_model):
    """Backoff past the deadline: waiting would only end in a timeout, so the answer is given now."""
    config = make_config(stub_model, worker={"restart_backoff_s": 120, "request_timeout_s": 30})
    transport = _stub(config)
    await transport.start()
    try:
        await _ready(transport)
        os.kill(transport.info.pid, signal.SIGKILL)
        await _until(lambda: transport.state == "restarting", timeout=5)
        started = time.monotonic()
        refused = await transport.classify(_request(_shape("赤い丸")))
        assert refused.error is ErrorCode.UNAVAILABLE and "keeps crashing" in refused.message
        assert time.monotonic() - started < 1.0 and transport.in_flight == 0
    finally:
        await transport.close()


@pytest.mark.slow
async def test_a_worker_that_answers_one_request_then_hangs_on_another_is_caught(stub_model, monkeypatch):
    """Silence is measured from the oldest request the worker has not answered, not from its last
    message: an answer to one request must not hide that another, sent before it, is stuck."""
    _arm_faults(monkeypatch, "batch_delay_ms=1000")
    _shorter_hang_margin(monkeypatch)
    config = make_config(stub_model, worker={"request_timeout_s": 1.0, "restart_backoff_s": 0.1, "max_batch": 1})
    transport = _stub(config)
    await transport.start()
    try:
        await _ready(transport)
        pid = transport.info.pid
        first = asyncio.ensure_future(transport.classify(_request(_shape("緑の丸", 2), deadline_s=30)))
        await asyncio.sleep(0.3)  # the first is in the model (1 s); the second waits behind it
        second = asyncio.ensure_future(transport.classify(_request(_shape("赤い丸", 3), deadline_s=30)))
        assert (await first).ok
        os.kill(pid, signal.SIGSTOP)  # answered one, now stuck with the other: nothing more is sent
        waited = await _until(lambda: transport.restarts == 1 and transport.state == "ready", timeout=60)
        assert transport.info.pid != pid and waited < 20  # limit: 1 s + 2 s after the second was sent
        again = await second  # sent again to the new worker
        assert again.ok and again.top[0].label == "赤い丸"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await transport.close()


@pytest.mark.slow
async def test_a_worker_that_hangs_is_killed_and_restarted(stub_model, monkeypatch):
    _shorter_hang_margin(monkeypatch)  # hung: silent for 1 s + 2 s
    transport = _stub(make_config(stub_model, worker={"request_timeout_s": 1.0, "restart_backoff_s": 0.1}))
    await transport.start()
    try:
        await _ready(transport)
        pid = transport.info.pid
        idle = await transport.classify(_request(_shape("緑の丸", 2)))
        assert idle.ok
        await asyncio.sleep(4)  # longer than the limit: an idle worker (a cancelled request included) is not "hung"
        assert transport.restarts == 0
        os.kill(pid, signal.SIGSTOP)  # alive but silent, like a stuck GPU call
        stuck = await transport.classify(_request(_shape("赤い丸"), deadline_s=1.0))
        assert stuck.error is ErrorCode.DEADLINE_EXCEEDED
        waited = await _until(lambda: transport.restarts == 1 and transport.state == "ready", timeout=60)
        assert transport.info.pid != pid and waited < 30
        again = await transport.classify(_request(_shape("青い丸", 1)))
        assert again.ok and again.top[0].label == "青い丸"
    finally:
        await transport.close()


@pytest.mark.slow
async def test_close_while_the_model_loads_stops_the_worker_and_never_restarts_it(stub_model, monkeypatch):
    _arm_faults(monkeypatch, "load_delay_ms=2000")  # still loading when close() comes; "ready" comes after it
    transport = _stub(make_config(stub_model, worker={"restart_backoff_s": 0.0}))
    await transport.start()
    process = transport._worker.process
    await asyncio.sleep(0.5)  # starting or loading in the child
    started = time.monotonic()
    await transport.close()
    assert time.monotonic() - started < 60  # the 15 s grace, then the kill (local.KILL_WAIT_S at most)
    assert not process.is_alive() and transport.state == "stopped"
    await asyncio.sleep(1.0)  # a late "ready" or exit must not bring it back
    assert transport.state == "stopped" and transport._worker.process is process and transport.restarts == 0


@pytest.mark.slow
def test_the_bot_process_never_imports_torch(trained_model):
    """Start the transport from a fresh interpreter and classify: torch must load only in the child."""
    script = f"""
import asyncio, sys, time
from bot.transport import Reservation
from bot.transport.local import LocalWorkerTransport
import importlib, pkgutil, bot
for module in pkgutil.walk_packages(bot.__path__, 'bot.'):  # every module of the bot package
    importlib.import_module(module.name)
from tests.conftest import make_config
from tests.support import shapes
from wakeru.protocol import ClassifyRequest
import random

async def main():
    t = LocalWorkerTransport(make_config({str(trained_model)!r}))
    await t.start()
    await asyncio.wait_for(t.ready.wait(), 120)
    img = shapes.encode(shapes.draw("緑の丸", (120, 120), random.Random(1)), "PNG")
    r = await t.classify(ClassifyRequest(id="x", image=img, labels=shapes.CLASSES, deadline=time.time() + 60))
    await t.close()
    print(r.top[0].label, "torch" in sys.modules, "transformers" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["緑の丸", "False", "False"], out.stdout + out.stderr[-2000:]


async def test_places_are_taken_before_the_download_so_a_burst_is_refused_unfetched():
    transport = LocalWorkerTransport(make_config(worker={"queue_size": 2}))
    transport.state = "ready"  # admission needs no worker process
    a, b = transport.reserve("a", 1000), transport.reserve("b", 1000)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    busy = transport.reserve("c", 1000)
    assert busy.error is ErrorCode.QUEUE_FULL and "2 images" in busy.message
    with a:  # a download failed: leaving the block gives its place back
        pass
    assert isinstance(transport.reserve("d", 1000), Reservation)
    transport.stop_accepting()
    assert transport.reserve("e", 1000).error is ErrorCode.UNAVAILABLE


async def test_the_bytes_a_bot_holds_are_bounded_too():
    """A few huge originals fill the byte budget long before the count: the next one is "busy"."""
    mib = 1024 * 1024
    transport = LocalWorkerTransport(make_config(worker={"queue_size": 100, "queue_max_bytes": 30 * mib}))
    transport.state = "ready"
    first = transport.reserve("a", 25 * mib)  # a download of up to 25 MiB
    assert isinstance(first, Reservation) and transport.held_bytes == 25 * mib
    refused = transport.reserve("b", 10 * mib)
    assert refused.error is ErrorCode.QUEUE_FULL and "MiB" in refused.message
    first.resize(60_000)  # it came as the media proxy's rendition: only its bytes are held
    second = transport.reserve("b", 10 * mib)
    assert isinstance(second, Reservation) and transport.held_bytes == 60_000 + 10 * mib
    first.release()
    second.release()
    assert transport.held_bytes == 0 and transport.reserve("c", 25 * mib).bytes == 25 * mib
