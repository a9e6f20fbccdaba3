"""How the bot reaches the model worker: a small async interface and its local implementation.

`WorkerTransport` is all the rest of the bot knows: start, classify (always answers
with a ClassifyResult, never raises for a request's problems), close. The local
implementation spawns `model_worker.serve.run_local_worker` in a child process and
talks to it over two one-way pipes; a networked transport can replace it without
touching the callers.

It also supervises the worker. A worker that dies (killed, out of memory, a native
crash) is noticed at once (its result pipe reaches EOF) and restarted after a backoff
that doubles while it keeps dying. Requests it was holding are sent again to the new
worker, one at a time so that an image which crashes the worker can be told apart
from the images that happened to share its batch; one that was in the worker at two
deaths is answered CRASHED instead of being tried a third time. While the worker is
loading or down, new requests are answered UNAVAILABLE at once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode

from . import metrics

log = logging.getLogger("wakeru.transport")

# Extra time the bot waits beyond a request's deadline for the worker's own
# deadline answer to arrive before it answers for the worker.
_DEADLINE_GRACE_S = 2.0
# A worker that dies this many times in a row before its model is loaded is not
# started again: the cause (no memory for the model, a broken install) will not pass.
_MAX_LOADING_DEATHS = 3
# A worker sent a request that says nothing at all for request_timeout_s plus this long
# (at least; and as long again for long timeouts) is hung (a stuck GPU call): it is killed
# and restarted. Every request gets exactly one message back, even a cancelled one.
_HUNG_MARGIN_S = 5.0


class WorkerTransport(Protocol):
    state: str  # "stopped" | "starting" | "ready" | "restarting" | "failed"

    async def start(self) -> None: ...

    async def classify(self, request: ClassifyRequest, *, admitted: bool = False) -> ClassifyResult: ...

    def admit(self, request_id: str) -> ClassifyResult | None: ...

    def release(self) -> None: ...

    def stop_accepting(self) -> None: ...

    def abandon(self, message: str) -> None: ...

    async def close(self) -> None: ...


def make_transport(config: Config) -> "TransportBase":
    """worker.transport: local (a child process) or redis (workers anywhere, through Redis Streams)."""
    if config.worker.transport == "redis":
        from .redis_transport import RedisWorkerTransport

        return RedisWorkerTransport(config)
    return LocalWorkerTransport(config)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the kernel's out-of-memory killer sends this too)" if exitcode == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


class _WorkerProcess:
    """One incarnation of the worker: the process, its two pipes and the two threads that
    move messages between the pipes and the event loop (pipe I/O blocks; the loop must not)."""

    def __init__(self, number: int, config: Config, loop: asyncio.AbstractEventLoop, on_message, on_exit):
        from model_worker.serve import run_local_worker  # torch-free module: names the spawn target

        self.number = number
        self._loop, self._on_message, self._on_exit = loop, on_message, on_exit
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds threads and sockets
        self._their_requests, self._requests = ctx.Pipe(duplex=False)
        self._results, self._their_results = ctx.Pipe(duplex=False)
        root = logging.getLogger()
        self.process = ctx.Process(
            target=run_local_worker, name=f"wakeru-worker-{number}", daemon=True,
            args=(config.model_dump(mode="python"), self._their_requests, self._their_results,
                  config.service.log_format, root.level))
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._started = threading.Event()  # stop() must not race a start still in progress

    def start(self) -> None:
        """Blocking (spawning takes a moment): call it in a thread."""
        try:
            self.process.start()
        finally:
            self._started.set()
        # Only the child may hold its ends: then either side's death is EOF for the other.
        self._their_requests.close()
        self._their_results.close()
        threading.Thread(target=self._write, name=f"wakeru-requests-{self.number}", daemon=True).start()
        threading.Thread(target=self._read, name=f"wakeru-results-{self.number}", daemon=True).start()

    def send(self, message) -> None:
        self._outbox.put(message)  # never blocks the loop; the writer thread does the pickling

    def _write(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                break
            try:
                self._requests.send(message)
            except (BrokenPipeError, EOFError, OSError):
                break  # the worker is gone; the reader reports it
        self._requests.close()

    def _read(self) -> None:
        while True:
            try:
                message = self._results.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a garbled message: this worker cannot be trusted any more
                log.exception("unreadable message from the model worker; killing it")
                self.process.kill()
                break
            self._post(self._on_message, self.number, message)
        self._results.close()
        self.process.join(5)
        self._outbox.put(None)
        self._post(self._on_exit, self.number, self.process.exitcode)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed during shutdown
            pass

    def kill(self) -> None:
        if self._started.is_set() and self.process.is_alive():
            self.process.kill()

    def stop(self, timeout: float) -> None:
        """Blocking: ask the worker to finish, then insist."""
        self._started.wait(60)
        if self.process.is_alive():
            self.send(("stop", None))
            self.process.join(timeout)
        if self.process.is_alive():
            log.warning("model worker did not stop within %.0f s; terminating it", timeout)
            self.process.kill()
            self.process.join(5)
        self._outbox.put(None)


@dataclass(eq=False)
class _Pending:
    request: ClassifyRequest
    future: asyncio.Future
    attempts: int = 1          # worker incarnations that have been sent this request
    worker: int | None = None  # the incarnation holding it now; None while waiting to be sent again


class TransportBase:
    """What every transport shares: its state, the places a bot may hold (images still
    downloading included), refusals while it cannot serve or is shutting down, and the
    futures of the requests in flight."""

    def __init__(self, config: Config):
        self.config = config
        self.state = "stopped"
        self.failure: str | None = None   # why there is no model (load failure, repeated crashes)
        self.info: dict = {}              # what the worker reported when ready
        self.ready = asyncio.Event()      # set once the first worker is ready (or has failed for good)
        self.restarts = 0
        self._capacity = config.worker.queue_size
        self._accepting = True
        self._reserved = 0  # places taken by images still downloading (admit → classify or release)
        self._pending: dict = {}  # request id → an entry with .request and .future
        metrics.QUEUE_DEPTH.set_function(lambda: len(self._pending))
        metrics.set_worker_state(self.state)

    def stop_accepting(self) -> None:
        """Shutdown has begun: new requests are refused; those in flight go on."""
        self._accepting = False

    def abandon(self, message: str) -> None:
        """Answer everything in flight now (the grace period is over)."""
        self._fail_all(ErrorCode.UNAVAILABLE, message)

    def admit(self, request_id: str) -> ClassifyResult | None:
        """Take a place for an image about to be downloaded, or say why not (not ready, shutting
        down, busy). A burst is refused here, before its bytes are fetched; the place is handed
        to `classify(..., admitted=True)` or given back with `release()`."""
        refused = self._refusal(request_id)
        if refused is None:
            self._reserved += 1
        return refused

    def release(self) -> None:
        self._reserved = max(0, self._reserved - 1)

    def _unavailable_because(self) -> str:
        return "the worker is stopped"

    def _refusal(self, request_id: str) -> ClassifyResult | None:
        if not self._accepting:
            return ClassifyResult.failure(request_id, ErrorCode.UNAVAILABLE, "the bot is shutting down")
        if self.state != "ready":
            # While loading, queueing would pile image bytes up in this process with no one reading them.
            return ClassifyResult.failure(request_id, ErrorCode.UNAVAILABLE,
                                          f"temporarily unavailable: {self._unavailable_because()}")
        waiting = len(self._pending) + self._reserved
        if waiting >= self._capacity:
            return ClassifyResult.failure(request_id, ErrorCode.QUEUE_FULL,
                                          f"the model is busy ({waiting} images waiting); try again")
        return None

    def _fail_all(self, code: ErrorCode, message: str) -> None:
        for request_id, entry in list(self._pending.items()):
            if not entry.future.done():
                entry.future.set_result(ClassifyResult.failure(request_id, code, message))

    def _set_state(self, state: str) -> None:
        self.state = state
        metrics.set_worker_state(state)

    @property
    def in_flight(self) -> int:
        return len(self._pending)


def deadline_wait(request: ClassifyRequest) -> float | None:
    """How long the bot waits for an answer: the request's deadline plus a grace for the
    worker's own deadline answer to arrive."""
    return None if request.deadline is None else max(0.0, request.deadline - time.time()) + _DEADLINE_GRACE_S


def timed_out(request: ClassifyRequest) -> ClassifyResult:
    return ClassifyResult.failure(request.id, ErrorCode.DEADLINE_EXCEEDED, "no answer from the model worker in time")


class LocalWorkerTransport(TransportBase):
    """The model worker as a supervised child process of the bot."""

    def __init__(self, config: Config):
        super().__init__(config)
        self._resend: deque[str] = deque()   # ids to send again after a crash, one at a time
        self._resend_in_flight: str | None = None
        self._worker: _WorkerProcess | None = None
        self._number = 0
        self._crashes = 0              # consecutive deaths
        self._loading_deaths = 0       # consecutive deaths before the model was loaded
        self._ready_at: float | None = None
        self._restart_task: asyncio.Task | None = None
        self._silent_since: float | None = None  # first request sent since the worker last said anything
        self._watchdog: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state != "stopped":
            return  # idempotent: a reconnecting client calls it again
        self._set_state("starting")
        self._watchdog = asyncio.ensure_future(self._watch())
        await self._spawn()

    async def _spawn(self) -> None:
        self._number += 1
        self._ready_at = self._silent_since = None
        worker = _WorkerProcess(self._number, self.config, asyncio.get_running_loop(),
                                self._on_message, self._on_exit)
        self._worker = worker
        await asyncio.to_thread(worker.start)
        log.info("model worker %d started (pid %s), loading %s", worker.number, worker.process.pid,
                 self.config.model.id)

    async def close(self, timeout: float = 15.0) -> None:
        if self.state == "stopped":
            return
        self._accepting = False
        self._set_state("stopped")
        for task in (self._restart_task, self._watchdog):
            if task is not None:
                task.cancel()
        self._fail_all(ErrorCode.UNAVAILABLE, "the bot is shutting down")
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop, timeout)

    # ---- requests ----------------------------------------------------------------------

    def _unavailable_because(self) -> str:
        return {"starting": "the model is still loading",
                "restarting": "the model worker is restarting after a crash",
                "failed": self.failure or "the model could not be loaded"}.get(self.state, "the worker is stopped")

    async def classify(self, request: ClassifyRequest, *, admitted: bool = False) -> ClassifyResult:
        if admitted:
            self.release()  # the place taken by admit() becomes this request's own
        refused = self._refusal(request.id)
        if refused is not None:
            return refused
        if request.id in self._pending:
            return ClassifyResult.failure(request.id, ErrorCode.BAD_REQUEST, "duplicate request id")
        entry = _Pending(request, asyncio.get_running_loop().create_future(), worker=self._number)
        self._pending[request.id] = entry
        try:
            self._send_request(request)
            return await asyncio.wait_for(asyncio.shield(entry.future), deadline_wait(request))
        except asyncio.TimeoutError:
            return timed_out(request)
        finally:
            self._forget(entry)

    def _forget(self, entry: _Pending) -> None:
        """The caller has its answer (or gave up): free the place, tell the worker if it holds it."""
        request_id = entry.request.id
        if self._pending.get(request_id) is not entry:
            return
        del self._pending[request_id]
        if not entry.future.done() and entry.worker == self._number and self._worker is not None:
            self._worker.send(("cancel", request_id))  # gives the worker's queue place back
        if self._resend_in_flight == request_id:
            self._resend_in_flight = None
            self._send_next_resend()

    # ---- messages from the worker (on the loop) ------------------------------------------

    def _send_request(self, request: ClassifyRequest) -> None:
        if self._silent_since is None:
            self._silent_since = time.monotonic()
        self._worker.send(("classify", request.to_dict()))

    async def _watch(self) -> None:
        """Kill a worker that is alive but silent (a stuck GPU call, a deadlock): its requests
        would time out one after the other forever. The restart path then takes over."""
        timeout = self.config.worker.request_timeout_s
        limit = timeout + max(_HUNG_MARGIN_S, timeout)
        while True:
            await asyncio.sleep(1.0)
            silent = None if self._silent_since is None else time.monotonic() - self._silent_since
            if self.state == "ready" and silent is not None and silent > limit and self._worker is not None:
                log.error("model worker %d has not answered anything for %.0f s; killing it (it will be restarted)",
                          self._worker.number, silent)
                self._silent_since = None
                await asyncio.to_thread(self._worker.kill)

    def _on_message(self, number: int, message) -> None:
        if number != self._number or self.state == "stopped":
            return  # a dead incarnation's last words, or news after close()
        self._silent_since = None
        kind, payload = message
        if kind in ("result", "cancelled"):
            request_id = payload["id"] if kind == "result" else payload
            if kind == "result":
                result = ClassifyResult.from_dict(payload)
                entry = self._pending.get(result.id)
                if entry is not None and entry.worker == number and not entry.future.done():
                    entry.future.set_result(result)
            if request_id == self._resend_in_flight:
                self._resend_in_flight = None
                self._send_next_resend()
        elif kind == "ready":
            self.info, self._ready_at, self._loading_deaths = payload, time.monotonic(), 0
            self._set_state("ready")
            self.ready.set()
            log.info("model worker %d ready: %s", number, payload)
            if self._resend:
                log.info("sending %d request(s) held by the dead worker again, one at a time", len(self._resend))
            self._send_next_resend()
        elif kind == "failed":
            self.failure = payload
            self._set_state("failed")
            self.ready.set()
            log.error("the model could not be loaded, so images are answered \"unavailable\": %s "
                      "(fix it, then restart the bot)", payload)
            self._fail_all(ErrorCode.UNAVAILABLE, f"the model could not be loaded: {payload}")

    def _on_exit(self, number: int, exitcode: int | None) -> None:  # noqa: C901 - one decision, kept together
        if number != self._number or self.state in ("stopped", "failed"):
            return  # an orderly stop, or a load failure already reported
        uptime = None if self._ready_at is None else time.monotonic() - self._ready_at
        if uptime is not None and uptime >= self.config.worker.restart_reset_s:
            self._crashes = 0
        self._crashes += 1
        self._loading_deaths = 0 if uptime is not None else self._loading_deaths + 1
        held = [e for e in self._pending.values() if e.worker == number]
        log.error("model worker %d died (%s) holding %d request(s)%s", number, describe_exit(exitcode), len(held),
                  "" if uptime is None else f" after {uptime:.0f} s")
        self._resend_in_flight = None
        for entry in held:
            entry.worker = None
            if entry.future.done():
                continue  # answered just before the death; its caller is about to collect it
            if entry.attempts >= 2:
                log.warning("request was in the worker at two crashes; answering it as crashed",
                            extra={"request_id": entry.request.id})
                entry.future.set_result(ClassifyResult.failure(
                    entry.request.id, ErrorCode.CRASHED,
                    "the model worker died twice while handling this image; it was not tried again"))
            else:
                self._resend.append(entry.request.id)
        if self._loading_deaths >= _MAX_LOADING_DEATHS:
            hint = ("; give it more memory or choose a smaller model" if exitcode == -signal.SIGKILL
                    else "; its log above says why")
            self.failure = (f"the model worker died {self._loading_deaths} times while loading {self.config.model.id} "
                            f"(last: {describe_exit(exitcode)}){hint}")
            self._set_state("failed")
            self.ready.set()
            log.error("%s; not restarting it again", self.failure)
            self._fail_all(ErrorCode.UNAVAILABLE, self.failure)
            return
        cfg = self.config.worker
        delay = min(cfg.restart_backoff_max_s, cfg.restart_backoff_s * 2 ** min(self._crashes - 1, 30))
        log.warning("restarting the model worker in %.1f s (crash %d in a row)", delay, self._crashes)
        self._set_state("restarting")
        self._restart_task = asyncio.ensure_future(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.state != "restarting":
            return
        self.restarts += 1
        metrics.WORKER_RESTARTS.inc()
        try:
            await self._spawn()
        except Exception as e:  # cannot even spawn (no memory for a process): report, do not loop
            self.failure = f"the model worker could not be started again: {e}"
            self._set_state("failed")
            log.exception("%s", self.failure)
            self._fail_all(ErrorCode.UNAVAILABLE, self.failure)

    def _send_next_resend(self) -> None:
        """Requests held by a dead worker go again one at a time: if one kills this worker
        too, it is the only one that was sent twice, and the only one refused."""
        if self.state != "ready" or self._resend_in_flight is not None:
            return
        while self._resend:
            entry = self._pending.get(self._resend.popleft())
            if entry is None or entry.future.done():
                continue
            entry.attempts += 1
            entry.worker = self._number
            self._resend_in_flight = entry.request.id
            log.info("sending a request again after a worker crash", extra={"request_id": entry.request.id})
            self._send_request(entry.request)
            return

    def _fail_all(self, code: ErrorCode, message: str) -> None:
        self._resend.clear()
        self._resend_in_flight = None
        super()._fail_all(code, message)
