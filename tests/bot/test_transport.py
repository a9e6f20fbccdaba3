"""The local transport against a real spawned worker process (tiny trained model)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from bot.transport import LocalWorkerTransport
from tests.conftest import REPO, make_config
from tests.support import shapes
from wakeru.protocol import ClassifyRequest, ErrorCode


def _request(image: bytes, labels=shapes.CLASSES, deadline_s: float = 60) -> ClassifyRequest:
    return ClassifyRequest(id=uuid.uuid4().hex, image=image, labels=tuple(labels), deadline=time.time() + deadline_s)


def _shape(label: str, seed: int = 0) -> bytes:
    return shapes.encode(shapes.draw(label, (160, 120), random.Random(seed)), "PNG")


async def test_worker_process_classifies_and_survives_bad_input(trained_model):
    transport = LocalWorkerTransport(make_config(trained_model))
    await transport.start()
    try:
        early = await transport.classify(_request(_shape("赤い丸")))  # torch is still importing in the child
        assert early.error is ErrorCode.UNAVAILABLE and "loading" in early.message
        await asyncio.wait_for(transport.ready.wait(), 120)
        assert transport.state == "ready", transport.failure
        assert transport.info["pid"] != os.getpid()
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


async def test_a_model_that_cannot_load_is_reported_and_answered_unavailable(tmp_path):
    transport = LocalWorkerTransport(make_config(tmp_path / "no-such-model"))
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 120)
        assert transport.state == "failed"
        assert "no-such-model" in transport.failure
        result = await transport.classify(_request(_shape("赤い丸")))
        assert result.error is ErrorCode.UNAVAILABLE and "no-such-model" in result.message
    finally:
        await transport.close()


async def test_a_dead_worker_answers_waiting_requests_instead_of_hanging(trained_model):
    transport = LocalWorkerTransport(make_config(trained_model, worker={"max_wait_ms": 2000.0}))
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 120)
        os.kill(transport.info["pid"], signal.SIGSTOP)  # holds the request inside the worker
        waiting = asyncio.ensure_future(transport.classify(_request(_shape("赤い丸"))))
        await asyncio.sleep(0.3)
        os.kill(transport.info["pid"], signal.SIGKILL)
        result = await asyncio.wait_for(waiting, 10)
        assert result.error is ErrorCode.UNAVAILABLE and "exit" in result.message
        assert transport.state == "failed"
    finally:
        await transport.close()


def test_the_bot_process_never_imports_torch(trained_model):
    """Start the transport from a fresh interpreter and classify: torch must load only in the child."""
    script = f"""
import asyncio, sys, time
from bot.transport import LocalWorkerTransport
import bot.cli, bot.client  # everything the bot imports
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
