"""`python -m bot bench-queue`: what the bot ↔ worker queue costs, measured from the bot's side.

Each answer carries the worker's own submit→result time (timings.total_ms), so the
round trip seen by the bot minus that is the transport's overhead: pickling, the
pipes and the hand-over to the event loop. No torch in this process either.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from wakeru.config import Config
from wakeru.protocol import ClassifyRequest

from .transport import LocalWorkerTransport


async def bench_queue(config: Config, images: list[bytes], requests: int, concurrency: int) -> dict:
    transport = LocalWorkerTransport(config)
    await transport.start()
    try:
        await transport.ready.wait()
        if transport.state != "ready":
            raise RuntimeError(f"the worker did not start: {transport.failure}")
        labels = config.labels.default

        def request(i: int) -> ClassifyRequest:
            return ClassifyRequest(id=uuid.uuid4().hex, image=images[i % len(images)], labels=labels,
                                   deadline=time.time() + 600)

        await asyncio.gather(*(transport.classify(request(i)) for i in range(min(16, requests))))  # warm-up
        round_trip, worker = [], []
        for i in range(requests):  # one at a time: latency without queueing
            started = time.perf_counter()
            result = await transport.classify(request(i))
            if not result.ok:
                raise RuntimeError(f"{result.error.value}: {result.message}")
            round_trip.append((time.perf_counter() - started) * 1000)
            worker.append(result.timings.total_ms)
        slots = asyncio.Semaphore(concurrency)

        async def limited(i: int):
            async with slots:
                return await transport.classify(request(i))
        started = time.perf_counter()
        results = await asyncio.gather(*(limited(i) for i in range(requests)))
        elapsed = time.perf_counter() - started
        failed = sum(not r.ok for r in results)
    finally:
        await transport.close()
    p50 = statistics.median
    return {"model": config.model.id, "device": transport.info.get("device"), "dtype": transport.info.get("dtype"),
            "requests": requests, "round_trip_p50_ms": round(p50(round_trip), 2),
            "worker_p50_ms": round(p50(worker), 2),
            "queue_overhead_p50_ms": round(p50([a - b for a, b in zip(round_trip, worker)]), 2),
            "concurrency": concurrency, "img_s": round(requests / elapsed, 1), "failed": failed}


def run(config: Config, requests: int, concurrency: int, as_json: bool) -> int:
    folder = Path(config.discord.samples_dir)
    images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    if not images:
        print(f"error: no .jpg images in {folder} (discord.samples_dir)")
        return 2
    figures = asyncio.run(bench_queue(config, images, requests, concurrency))
    if as_json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    return 0
