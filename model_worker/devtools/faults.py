"""Fault injection for reliability tests and drills: inert unless both WAKERU_FAULTS and the
explicit switch WAKERU_ALLOW_FAULTS=1 are set.

    WAKERU_ALLOW_FAULTS=1 WAKERU_FAULTS="crash_label=💥,batch_delay_ms=300"

WAKERU_FAULTS alone is ignored with a warning: a stray variable in a production environment
must not let any member crash the worker by typing the crash label.

- crash_label: a request whose labels include this one kills the worker process with
  SIGKILL on arrival, as an image that crashes a native decoder or the GPU driver would.
- batch_delay_ms: every forward pass takes this much longer (a slow device), so queues
  build up and a kill lands mid-batch.
- load_delay_ms: loading the model takes this much longer (a slow download or disk), so
  images arrive while the worker loads.

The worker logs a warning at start when any fault is armed (or set but not allowed), so it
never goes unnoticed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

log = logging.getLogger("wakeru.worker.faults")

ENV = "WAKERU_FAULTS"
ALLOW_ENV = "WAKERU_ALLOW_FAULTS"


@dataclass(frozen=True)
class Faults:
    crash_label: str | None = None
    batch_delay_ms: float = 0.0
    load_delay_ms: float = 0.0

    @classmethod
    def from_env(cls, environ=os.environ) -> Faults:
        raw = environ.get(ENV, "").strip()
        if not raw:
            return cls()
        if environ.get(ALLOW_ENV, "").strip() != "1":
            log.warning(
                "%s is set but ignored: fault injection is for tests and drills and also needs %s=1", ENV, ALLOW_ENV
            )
            return cls()
        values = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
        faults = cls(
            crash_label=values.get("crash_label") or None,
            batch_delay_ms=float(values.get("batch_delay_ms", 0) or 0),
            load_delay_ms=float(values.get("load_delay_ms", 0) or 0),
        )
        log.warning(
            "fault injection is ON (%s=%s, allowed by %s=1): this worker will misbehave on purpose", ENV, raw, ALLOW_ENV
        )
        return faults

    def check_request(self, labels) -> None:
        if self.crash_label is not None and self.crash_label in labels:
            log.warning("fault injection: crash label received, killing the worker")
            os.kill(os.getpid(), signal.SIGKILL)

    def before_load(self) -> None:
        if self.load_delay_ms > 0:
            time.sleep(self.load_delay_ms / 1000)

    def install(self, engine) -> None:
        """Slow every forward pass down by batch_delay_ms."""
        if self.batch_delay_ms <= 0:
            return
        adapter, encode, delay = engine.adapter, engine.adapter.encode_images, self.batch_delay_ms / 1000

        def slow_encode(inputs):
            time.sleep(delay)
            return encode(inputs)

        adapter.encode_images = slow_encode
