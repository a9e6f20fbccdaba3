"""How the bot reaches the model worker: a small async interface and its local implementation.

`WorkerTransport` is all the rest of the bot knows: start, classify (always answers
with a ClassifyResult, never raises for a request's problems), close. The local
implementation spawns `model_worker.serve.run_local_worker` in a child process and
talks to it over two multiprocessing queues; a networked transport can replace it
without touching the callers.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import threading
import time
from typing import Protocol

from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode

log = logging.getLogger("wakeru.transport")

# Extra time the bot waits beyond a request's deadline for the worker's own
# deadline answer to arrive before it answers for the worker.
_DEADLINE_GRACE_S = 2.0


class WorkerTransport(Protocol):
    state: str  # "stopped" | "starting" | "ready" | "failed"

    async def start(self) -> None: ...

    async def classify(self, request: ClassifyRequest) -> ClassifyResult: ...

    async def close(self) -> None: ...


class LocalWorkerTransport:
    """The model worker as a child process of the bot, over multiprocessing queues."""

    def __init__(self, config: Config):
        self.config = config
        self.state = "stopped"
        self.failure: str | None = None   # why the model could not load
        self.info: dict = {}              # what the worker reported when ready
        self.ready = asyncio.Event()
        self._capacity = config.worker.queue_size
        self._pending: dict[str, asyncio.Future[ClassifyResult]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process = None
        self._requests = None
        self._results = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()

    async def start(self) -> None:
        if self.state != "stopped":
            return
        from model_worker.serve import run_local_worker  # torch-free module: names the spawn target

        self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds threads and sockets
        self._requests, self._results = ctx.Queue(), ctx.Queue()
        self._process = ctx.Process(target=run_local_worker, name="wakeru-worker", daemon=True,
                                    args=(self.config.model_dump(mode="python"), self._requests, self._results))
        self.state = "starting"
        self._stopping.clear()
        await asyncio.to_thread(self._process.start)
        log.info("model worker started (pid %s), loading %s", self._process.pid, self.config.model.id)
        self._reader = threading.Thread(target=self._read_results, name="wakeru-results", daemon=True)
        self._reader.start()

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        if self.state != "ready":
            # While loading, queueing would pile image bytes up in this process with no one reading them.
            why = {"starting": ": the model is still loading"}.get(self.state, f": {self.failure}" if self.failure else "")
            return ClassifyResult.failure(request.id, ErrorCode.UNAVAILABLE, f"the model worker is not ready{why}")
        if len(self._pending) >= self._capacity:
            return ClassifyResult.failure(request.id, ErrorCode.QUEUE_FULL,
                                          f"the model is busy ({len(self._pending)} images waiting); try again")
        if request.id in self._pending:
            return ClassifyResult.failure(request.id, ErrorCode.BAD_REQUEST, "duplicate request id")
        future = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            # mp.Queue.put only appends to a buffer; its feeder thread pickles and writes
            self._requests.put(("classify", request.to_dict()))
            timeout = None if request.deadline is None else max(0.0, request.deadline - time.time()) + _DEADLINE_GRACE_S
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self._cancel(request.id)
            return ClassifyResult.failure(request.id, ErrorCode.DEADLINE_EXCEEDED,
                                          "no answer from the model worker in time")
        except asyncio.CancelledError:
            self._cancel(request.id)
            raise
        finally:
            self._pending.pop(request.id, None)

    def _cancel(self, request_id: str) -> None:
        if self._requests is not None and self.state == "ready":
            self._requests.put(("cancel", request_id))  # gives the worker's queue place back

    async def close(self, timeout: float = 15.0) -> None:
        if self.state == "stopped":
            return
        process, self.state = self._process, "stopped"
        if process is not None and process.is_alive():
            self._requests.put(("stop", None))
            # the reader keeps draining meanwhile: a worker cannot exit while its result pipe is full
            await asyncio.to_thread(process.join, timeout)
            if process.is_alive():
                log.warning("model worker did not stop within %.0f s; terminating it", timeout)
                process.terminate()
                await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
        self._stopping.set()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
        self._fail_pending("the bot is shutting down")
        for q in (self._requests, self._results):
            q.close()
            q.cancel_join_thread()  # never hang exit on unread buffered requests

    # ---- reader thread ----------------------------------------------------------------

    def _read_results(self) -> None:
        """Blocking reads off the loop; every message is handed to the loop thread-safely."""
        process = self._process
        while not self._stopping.is_set():
            try:
                message = self._results.get(timeout=0.25)
            except queue.Empty:
                if not process.is_alive():
                    self._post(self._worker_died, process.exitcode)
                    return
                continue
            except (EOFError, OSError):
                return
            self._post(self._on_message, message)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed during shutdown
            pass

    def _on_message(self, message) -> None:
        kind, payload = message
        if kind == "result":
            result = ClassifyResult.from_dict(payload)
            future = self._pending.get(result.id)
            if future is not None and not future.done():
                future.set_result(result)
        elif kind == "ready":
            self.info, self.state = payload, "ready"
            self.ready.set()
            log.info("model worker ready: %s", payload)
        elif kind == "failed":
            self.failure, self.state = payload, "failed"
            self.ready.set()
            log.error("the model could not be loaded, images will be answered as unavailable: %s", payload)
            self._fail_pending(f"the model could not be loaded: {payload}")

    def _worker_died(self, exitcode) -> None:
        if self.state == "stopped" or self._stopping.is_set():
            return
        if self.state != "failed":
            self.failure = f"the model worker exited unexpectedly (exit code {exitcode})"
            self.state = "failed"
            log.error("%s", self.failure)
        self.ready.set()
        self._fail_pending(self.failure or "the model worker stopped")

    def _fail_pending(self, message: str) -> None:
        for request_id, future in list(self._pending.items()):
            if not future.done():
                future.set_result(ClassifyResult.failure(request_id, ErrorCode.UNAVAILABLE, message))
