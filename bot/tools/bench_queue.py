"""`python -m bot bench-queue`: what the bot ↔ worker queue costs, measured from the bot's side.

Each answer carries the worker's own submit→result time (timings.total_ms), so the
round trip seen by the bot minus that is the transport's overhead: pickling, the
pipes and the hand-over to the event loop (local), or XADD, XREADGROUP, the reply
stream and XREAD (redis). No torch in this process either.

With `--transport redis --workers N` it starts N `python -m model_worker serve`
processes on this machine (and, with `--start-redis`, a throwaway redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

from bot.transport import WorkerTransport, make_transport
from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult


class BenchFigures(TypedDict):
    """What bench_queue measured (printed, or written as JSON with --json)."""

    model: str
    device: str | None
    dtype: str | None
    transport: str
    workers: int
    requests: int
    round_trip_p50_ms: float
    worker_p50_ms: float
    queue_overhead_p50_ms: float
    concurrency: int
    img_s: float
    failed: int


async def _ready(transport: WorkerTransport, workers: int, processes: list[subprocess.Popen[bytes]]) -> None:
    await transport.ready.wait()
    if transport.state != "ready":
        raise RuntimeError(f"the worker did not start: {transport.failure}")
    while transport.live_workers < workers:  # redis: every worker announced
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(
                "a model worker exited before it was ready; run `python -m model_worker serve` alone to see why"
            )
        await asyncio.sleep(0.1)


async def bench_queue(
    config: Config, images: list[bytes], requests: int, concurrency: int, workers: int = 1
) -> BenchFigures:
    transport = make_transport(config)
    await transport.start()
    processes = _start_workers(config, workers) if config.worker.transport == "redis" else []
    try:
        await asyncio.wait_for(_ready(transport, workers, processes), 600)
        labels = config.labels.default

        def request(i: int) -> ClassifyRequest:
            return ClassifyRequest(
                id=uuid.uuid4().hex, image=images[i % len(images)], labels=labels, deadline=time.time() + 600
            )

        await asyncio.gather(*(transport.classify(request(i)) for i in range(min(16, requests))))  # warm-up
        round_trip, worker = [], []
        for i in range(requests):  # one at a time: latency without queueing
            started = time.perf_counter()
            result = await transport.classify(request(i))
            if result.error is not None:  # i.e. not result.ok
                raise RuntimeError(f"{result.error.value}: {result.message}")
            round_trip.append((time.perf_counter() - started) * 1000)
            worker.append(result.timings.total_ms)
        slots = asyncio.Semaphore(concurrency)

        async def limited(i: int) -> ClassifyResult:
            async with slots:
                return await transport.classify(request(i))

        started = time.perf_counter()
        results = await asyncio.gather(*(limited(i) for i in range(requests)))
        elapsed = time.perf_counter() - started
        failed = sum(not r.ok for r in results)
    finally:
        await transport.close()
        _stop(processes)
    p50 = statistics.median
    return {
        "model": config.model.id,
        "device": transport.info.device if transport.info else None,
        "dtype": transport.info.dtype if transport.info else None,
        "transport": config.worker.transport,
        "workers": workers,
        "requests": requests,
        "round_trip_p50_ms": round(p50(round_trip), 2),
        "worker_p50_ms": round(p50(worker), 2),
        "queue_overhead_p50_ms": round(p50([a - b for a, b in zip(round_trip, worker)]), 2),
        "concurrency": concurrency,
        "img_s": round(requests / elapsed, 1),
        "failed": failed,
    }


def _start_workers(config: Config, count: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "WAKERU_MODEL__ID": config.model.id,
        "WAKERU_MODEL__DEVICE": config.model.device,
        "WAKERU_MODEL__DTYPE": config.model.dtype,
        "WAKERU_WORKER__REDIS_URL": config.worker.redis_url,
        "WAKERU_WORKER__REDIS_PREFIX": config.worker.redis_prefix,
        "WAKERU_WORKER__MAX_BATCH": str(config.worker.max_batch),
    }
    # Workers sharing one machine's CPU must split its cores: with every worker's torch using all
    # of them, their spinning threads fight and two workers ran 2.6x SLOWER than one (base model).
    if count > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    return [
        subprocess.Popen([sys.executable, "-m", "model_worker", "serve"], env=env, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server on a free loopback port with no persistence, for one benchmark run."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("error: --start-redis needs redis-server on PATH (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("error: the throwaway redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


def run(
    config: Config, requests: int, concurrency: int, as_json: bool, workers: int = 1, start_redis: bool = False
) -> int:
    folder = Path(config.discord.samples_dir)
    images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    if not images:
        print(f"error: no .jpg images in {folder} (discord.samples_dir)")
        return 2
    with throwaway_redis() if start_redis else contextlib.nullcontext(None) as url:
        if url is not None:
            config = config.with_overrides(worker={"redis_url": url})
        if config.worker.transport == "redis":  # its own streams: never compete with a live deployment
            config = config.with_overrides(worker={"redis_prefix": f"wakeru-bench-{uuid.uuid4().hex[:8]}"})
        figures = asyncio.run(bench_queue(config, images, requests, concurrency, workers))
    if as_json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    return 0
