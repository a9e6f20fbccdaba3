"""Prometheus metrics and the /healthz endpoint, served on service.metrics_port (off by default).

The bot process owns every metric: the worker's own timings (queue wait, decode,
model, batch size) travel back inside each result, so one scrape target covers
both processes and nothing needs a second port.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from bot.services.health import HealthState
    from wakeru.protocol import ClassifyResult

log = logging.getLogger("wakeru.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

# no_workers and unreachable: worker.transport redis, with no live worker or no Redis
WORKER_STATES = ["stopped", "starting", "ready", "restarting", "failed", "no_workers", "unreachable"]
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

QUEUE_DEPTH = Gauge("wakeru_queue_depth", "Images sent to the model worker and not answered yet", registry=REGISTRY)
QUEUE_BYTES = Gauge(
    "wakeru_queue_bytes",
    "Image bytes this bot process holds (downloading, waiting for an answer, "
    "kept to send again after a crash); bounded by worker.queue_max_bytes",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "wakeru_batch_size",
    "Size of the batch each image was classified in",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "wakeru_latency_seconds",
    "Time per image by stage: queue (waiting for a batch), decode, model (the batch's forward pass), "
    "worker (worker submit to result), total (download start to answer, seen by the bot)",
    ["stage"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
REQUESTS = Counter(
    "wakeru_requests",
    "Images answered, by where they came from and the outcome (ok or an error code)",
    ["source", "outcome"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "wakeru_rate_limited", "Images refused by the per-user or per-channel rate limit", ["scope"], registry=REGISTRY
)
WORKER_RESTARTS = Counter("wakeru_worker_restarts", "Model worker restarts after a crash", registry=REGISTRY)
WORKER_STATE = Enum("wakeru_worker_state", "State of the model worker", states=WORKER_STATES, registry=REGISTRY)
LABEL_CHANGES = Counter("wakeru_label_set_changes", "Label-set changes saved, by action", ["action"], registry=REGISTRY)
LIVE_WORKERS = Gauge(
    "wakeru_live_workers", "Model workers whose heartbeat is fresh (worker.transport redis)", registry=REGISTRY
)
DUPLICATE_RESULTS = Counter(
    "wakeru_duplicate_results",
    "Answers dropped because their request was already answered or given up (a worker taken over after going silent)",
    registry=REGISTRY,
)
GATEWAY_SESSIONS = Counter(
    "wakeru_gateway_sessions", "Gateway sessions started (READY) or resumed (RESUMED)", ["kind"], registry=REGISTRY
)


def set_worker_state(state: str) -> None:
    WORKER_STATE.state(state if state in WORKER_STATES else "stopped")


def observe_result(source: str, result: ClassifyResult, total_s: float | None = None) -> None:
    outcome = result.error.value if result.error else "ok"
    REQUESTS.labels(source, outcome).inc()
    t = result.timings
    if result.ok:
        BATCH_SIZE.observe(t.batch_size)
        for stage, ms in (
            ("queue", t.queue_ms),
            ("decode", t.decode_ms),
            ("model", t.model_ms),
            ("worker", t.total_ms),
        ):
            LATENCY.labels(stage).observe(ms / 1000)
    if total_s is not None:
        LATENCY.labels("total").observe(total_s)


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /healthz (JSON; 200 while the bot can
    serve or is recovering, 503 when the model failed for good or the bot is stopping)."""

    def __init__(self, host: str, port: int, health: Callable[[], HealthState]) -> None:
        self.host, self.port, self._health = host, port, health
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self._health()
        # no_workers / unreachable recover by themselves once a worker or Redis is back: degraded, not down
        healthy = state.get("worker") in (
            "starting",
            "ready",
            "restarting",
            "no_workers",
            "unreachable",
        ) and not state.get("stopping")
        state["status"] = "ok" if healthy and state.get("worker") == "ready" else ("degraded" if healthy else "down")
        return web.Response(status=200 if healthy else 503, text=json.dumps(state), content_type="application/json")
