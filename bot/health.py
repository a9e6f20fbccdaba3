"""A heartbeat file for container healthchecks: `python -m bot health` reads it.

The bot rewrites it every few seconds with the gateway and worker state, so a
stale file means a hung process and a "failed" worker means no model.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

INTERVAL_S = 15.0


def write(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"time": time.time(), **state}))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


async def heartbeat(path: Path, state) -> None:
    """Runs until cancelled; `state()` returns the dict to record. A change is written
    within a second (so "worker ready" shows at once), an unchanged state every INTERVAL_S."""
    last, written = None, 0.0
    while True:
        current = state()
        if current != last or time.monotonic() - written >= INTERVAL_S:
            await asyncio.to_thread(write, path, **current)
            last, written = current, time.monotonic()
        await asyncio.sleep(1.0)


def check(path: Path, max_age_s: float = 4 * INTERVAL_S) -> tuple[bool, str]:
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
