"""The worker's end of the Redis transport under a Redis that misbehaves (a real redis-server and
`python -m model_worker serve` processes: the real command line and Redis consumer around the
torch-free stand-in engine of tests/support/stub_worker.py): paused past the socket timeout in the
middle of a delivery, out of memory, and the worker's own signal handling."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
import redis

from bot.transport.redis_streams import RedisWorkerTransport
from tests.bot.transport.test_redis_streams import (
    PREFIX,
    STREAM,
    _config,
    _consumer_of,
    _held_by,
    _request,
    _shape,
    _until,
)
from tests.conftest import REPO
from tests.support.redis_server import WorkerProcess, redis_server, redis_url, wait_for_workers  # noqa: F401
from wakeru.protocol import REQUESTS_GROUP, ErrorCode, heartbeat_key

pytestmark = pytest.mark.slow  # a real redis-server and worker processes


def _heartbeat(client, worker: WorkerProcess) -> dict:
    key = heartbeat_key(PREFIX, _consumer_of(worker))
    return json.loads(client.get(key) or "{}")


async def _one_held(transport, client, worker: WorkerProcess, label: str, deadline_s: float) -> asyncio.Future:
    """One image sent once `worker` is alive, and waited for until the worker holds it."""
    wait_for_workers(client, PREFIX, 1, processes=(worker,))
    await asyncio.wait_for(transport.ready.wait(), 30)
    task = asyncio.ensure_future(transport.classify(_request(_shape(label), deadline_s=deadline_s)))
    await _until(lambda: _held_by(client, _consumer_of(worker)) == 1, what="the worker to hold the image")
    return task


async def test_a_redis_paused_past_the_socket_timeout_mid_delivery_does_not_wedge_the_worker(
    stub_model, redis_url, tmp_path
):
    """The answer is ready while Redis is paused (CLIENT PAUSE) longer than worker.redis_timeout_s:
    the write times out, is retried, and arrives once Redis is back; the worker then serves on."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(stub_model, redis_url, redis_timeout_s=2))
    worker = WorkerProcess(
        stub_model,
        redis_url,
        tmp_path,
        worker="stub",
        WAKERU_FAULTS="batch_delay_ms=1500",
        WAKERU_WORKER__REDIS_TIMEOUT_S="2",
    ).start()
    await transport.start()
    try:
        task = await _one_held(transport, client, worker, "青い丸", deadline_s=40)
        redis.Redis.from_url(redis_url).client_pause(6000)  # every client waits; the answer comes in ~1.5 s
        paused_at = time.monotonic()
        result = await asyncio.wait_for(task, 40)
        assert result.ok and result.top[0].label == "青い丸", result
        assert time.monotonic() - paused_at >= 5  # delivered after the pause, by a retry
        assert "cannot deliver" in worker.log() and "Timeout" in worker.log()
        await _until(lambda: transport.state == "ready", what="the bot to see Redis and the worker again")
        again = await asyncio.wait_for(transport.classify(_request(_shape("緑の四角", 1))), 40)
        assert again.ok and again.top[0].label == "緑の四角"  # the worker still answers
        await _until(lambda: client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0, what="nothing held")
        assert worker.process.poll() is None
    finally:
        worker.stop()
        await transport.close()


async def test_a_redis_out_of_memory_is_busy_for_the_bot_and_the_worker_releases_what_it_cannot_deliver(
    stub_model, redis_url, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(stub_model, redis_url))
    worker = WorkerProcess(stub_model, redis_url, tmp_path, worker="stub", WAKERU_FAULTS="batch_delay_ms=1500").start()
    await transport.start()
    try:
        task = await _one_held(transport, client, worker, "赤い四角", deadline_s=3)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")  # below what is used: every write that grows memory fails
        try:
            # the bot: a full queue is "busy", at once
            started = time.monotonic()
            busy = await transport.classify(_request(_shape("赤い丸")))
            assert busy.error is ErrorCode.QUEUE_FULL and time.monotonic() - started < 1.0, busy
            # the worker cannot write the answer; the bot answers at the deadline for it
            late = await asyncio.wait_for(task, 20)
            assert late.error is ErrorCode.DEADLINE_EXCEEDED
            # past the deadline (and the bot's grace) the worker gives the answer up and releases the
            # request (XACK and XDEL free memory, so Redis allows them): nothing stays claimed by it
            await _until(lambda: "giving up 1 answer" in worker.log(), timeout=20, what="the answer given up")
            assert client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0 and client.xlen(STREAM) == 0
        finally:
            client.config_set("maxmemory", "0")
        await _until(lambda: transport.state == "ready", what="the worker's heartbeat back")
        again = await asyncio.wait_for(transport.classify(_request(_shape("緑の丸", 2))), 40)
        assert again.ok and again.top[0].label == "緑の丸"
        await _until(lambda: _heartbeat(client, worker).get("in_flight") == 0, what="an empty worker")
        assert worker.process.poll() is None
    finally:
        worker.stop()
        await transport.close()


def test_a_signal_that_lands_while_the_worker_holds_its_lock_does_not_deadlock():
    """A signal handler runs in the main thread between two bytecodes, here while it holds the
    worker's lock (as its serve loop does): the handler must not take that lock."""
    script = """
import os, signal, time
from model_worker.serving.redis_consumer import RedisWorker, install_signal_handlers
from tests.conftest import make_config

worker = RedisWorker(None, make_config(), client=object(), name="t")
install_signal_handlers(worker)
with worker._room:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, lock held
    time.sleep(0.3)
    print("handler returned", flush=True)
print("stopping", worker._stopping.wait(5), flush=True)
os.kill(os.getpid(), signal.SIGINT)
print("hurried", worker._hurry.wait(5), flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.stdout.split("\n")[:3] == ["handler returned", "stopping True", "hurried True"], out


async def test_a_second_sigterm_stops_a_draining_worker_at_once(stub_model, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(stub_model, redis_url))
    worker = WorkerProcess(
        stub_model,
        redis_url,
        tmp_path,
        worker="stub",
        WAKERU_FAULTS="batch_delay_ms=120000",
        WAKERU_SERVICE__SHUTDOWN_GRACE_S="60",
    ).start()
    await transport.start()
    try:
        task = await _one_held(transport, client, worker, "赤い丸", deadline_s=120)
        worker.process.send_signal(signal.SIGTERM)  # drains: the held image gets up to 60 s
        await _until(lambda: "stop requested" in worker.log(), what="the first signal")
        assert worker.process.poll() is None
        worker.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(worker.process.wait, 30)
        assert code == 0 and time.monotonic() - started < 8, worker.log()[-2000:]
        assert "second stop signal" in worker.log()
        task.cancel()
    finally:
        worker.stop()
        await transport.close()
