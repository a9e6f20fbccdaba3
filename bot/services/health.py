"""Container healthchecks: `python -m bot health`.

With service.metrics_port set it asks the running bot's /healthz (answered by the
event loop itself, so a hung loop fails it). Otherwise it reads a heartbeat file the
bot rewrites every few seconds with the gateway and worker state: a stale file means
a hung process and a "failed" worker means no model.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    from wakeru.config import ServiceSection

INTERVAL_S = 15.0


class HealthState(TypedDict):
    """What the running bot says about itself, in the heartbeat file and on /healthz."""

    connected: bool  # the gateway is connected and ready
    worker: str  # the transport's state: "ready", "failed", "no_workers", …
    failure: str | None
    worker_pid: int | None
    restarts: int
    in_flight: int
    stopping: bool
    transport: str  # worker.transport
    workers: int  # live workers
    status: NotRequired[str]  # /healthz only: "ok" | "degraded" | "down"


def write(path: Path, **state: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": time.time(), **state}))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


async def heartbeat(path: Path, state: Callable[[], HealthState]) -> None:
    """Runs until cancelled; `state()` returns the dict to record. A change is written
    within a second (so "worker ready" shows at once), an unchanged state every INTERVAL_S."""
    last: HealthState | None = None
    written = 0.0
    while True:
        current = state()
        if current != last or time.monotonic() - written >= INTERVAL_S:
            await asyncio.to_thread(write, path, **current)
            last, written = current, time.monotonic()
        await asyncio.sleep(1.0)


def check(path: Path, service: ServiceSection | None = None, max_age_s: float = 4 * INTERVAL_S) -> tuple[bool, str]:
    if service is not None and service.metrics_port:
        return check_endpoint(service.metrics_host, service.metrics_port)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return False, f"no heartbeat at {path}: {e}"
    age = time.time() - data.get("time", 0)
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f} s old (the bot is hung or stopped)"
    if data.get("worker") == "failed":
        return False, f"the model worker failed: {data.get('failure')}"
    return True, f"ok: gateway {'connected' if data.get('connected') else 'connecting'}, worker {data.get('worker')}"


def check_endpoint(host: str, port: int, timeout: float = 5.0) -> tuple[bool, str]:
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as e:  # 503: the bot answers, but cannot classify
        try:
            data = json.loads(e.read())
        except ValueError:
            data = {}
        return False, f"unhealthy ({e.code}): worker {data.get('worker')}: {data.get('failure') or 'stopping'}"
    except (OSError, ValueError) as e:
        return False, f"no answer from {url}: {e}"
    return True, (
        f"{data.get('status')}: gateway {'connected' if data.get('connected') else 'connecting'}, "
        f"worker {data.get('worker')}, {data.get('in_flight', 0)} in flight, "
        f"{data.get('restarts', 0)} restart(s)"
    )
