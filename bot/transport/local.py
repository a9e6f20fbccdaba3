"""The local transport: the model worker as a supervised child process of the bot.

It spawns `model_worker.serving.pipe.run_local_worker` in a child process and talks to it over
two one-way pipes with the typed messages of `wakeru.protocol` (Classify, Cancel, Stop one
way; Ready, Failed, Result, Cancelled the other).

It supervises the worker. A worker that dies (killed, out of memory, a native
crash) is noticed at once (its result pipe reaches EOF) and restarted after a backoff
that doubles while it keeps dying. Requests it was holding are sent again to the new
worker, one at a time so that an image which crashes the worker can be told apart
from the images that happened to share its batch; one that was in the worker at two
deaths is answered CRASHED instead of being tried a third time.

While the worker is loading or restarting, requests wait (each by its own deadline, all
within `worker.queue_size` places and `worker.queue_max_bytes` of image bytes) and go to
the worker as soon as it is ready: a post made during a restart is classified, not
refused. UNAVAILABLE is for a model that failed to load, a worker that keeps dying (its
next restart comes after the deadline), and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.services import metrics
from bot.transport.base import Reservation, TransportBase, deadline_wait, timed_out
from wakeru.config import Config
from wakeru.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Cancelled,
    Classify,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    Failed,
    FromWorker,
    ProtocolError,
    Ready,
    Result,
    Stop,
    ToWorker,
    decode_from_worker,
    encode,
)

log = logging.getLogger("wakeru.transport")

_T = TypeVar("_T")

# A worker that dies this many times in a row before its model is loaded is not
# started again: the cause (no memory for the model, a broken install) will not pass.
_MAX_LOADING_DEATHS = 3
# A worker sent a request that says nothing at all for request_timeout_s plus this long
# (at least; and as long again for long timeouts) is hung (a stuck GPU call): it is killed
# and restarted. Every request gets exactly one message back, even a cancelled one.
_HUNG_MARGIN_S = 5.0
# After SIGKILL a worker is gone as soon as the kernel has torn it down: on a busy machine (a worker in the middle
# of writing bytecode, another process loading a model) that took longer than 5 s once.
KILL_WAIT_S = 30.0


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

    def __init__(
        self,
        number: int,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[int, FromWorker], None],
        on_exit: Callable[[int, int | None], None],
        target: Callable[..., None] | None = None,
    ):
        if target is None:
            from model_worker.serving.pipe import run_local_worker as target  # torch-free module: the spawn target

        self.number = number
        self._loop, self._on_message, self._on_exit = loop, on_message, on_exit
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds threads and sockets
        self._their_requests, self._requests = ctx.Pipe(duplex=False)
        self._results, self._their_results = ctx.Pipe(duplex=False)
        root = logging.getLogger()
        self.process = ctx.Process(
            target=target,
            name=f"wakeru-worker-{number}",
            daemon=True,
            args=(
                config.model_dump(mode="python"),
                self._their_requests,
                self._their_results,
                config.service.log_format,
                root.level,
            ),
        )
        self._outbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()  # encoded messages
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

    def send(self, message: ToWorker) -> None:
        self._outbox.put(encode(message))  # never blocks the loop; the writer thread does the pickling

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
                message = decode_from_worker(self._results.recv())
            except (EOFError, OSError):
                break
            except Exception as e:  # a garbled message: this worker cannot be trusted any more
                log.error(
                    "unreadable message from the model worker (%s); killing it",
                    e,
                    exc_info=not isinstance(e, ProtocolError),
                )
                self.process.kill()
                break
            self._post(self._on_message, self.number, message)
        self._results.close()
        self.process.join(5)
        self._outbox.put(None)
        self._post(self._on_exit, self.number, self.process.exitcode)

    def _post(self, fn: Callable[[int, _T], None], number: int, arg: _T) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, number, arg)
        except RuntimeError:  # loop already closed during shutdown
            pass

    def kill(self) -> None:
        if self._started.is_set() and self.process.is_alive():
            self.process.kill()

    def stop(self, timeout: float) -> None:
        """Blocking: ask the worker to finish, then insist."""
        self._started.wait(60)
        if self.process.is_alive():
            self.send(Stop())
            self.process.join(timeout)
        if self.process.is_alive():
            log.warning("model worker did not stop within %.0f s; terminating it", timeout)
            self.process.kill()
            self.process.join(KILL_WAIT_S)
        self._outbox.put(None)


@dataclass(eq=False)
class _Pending:
    request: ClassifyRequest
    future: asyncio.Future[ClassifyResult]
    place: Reservation
    attempts: int = 0  # worker incarnations that have been sent this request
    worker: int | None = None  # the incarnation holding it now; None while waiting for a worker


class LocalWorkerTransport(TransportBase[_Pending]):
    """The model worker as a supervised child process of the bot."""

    def __init__(self, config: Config, *, worker_target: Callable[..., None] | None = None):
        """`worker_target`: the child's entry point, called as target(config_dict, requests, results,
        log_format, log_level); model_worker.serving.pipe.run_local_worker unless a test swaps in a
        stand-in that speaks the same pipe protocol."""
        super().__init__(config)
        self._worker_target = worker_target
        self._waiting: deque[str] = deque()  # ids of new requests waiting for a ready worker
        self._resend: deque[str] = deque()  # ids to send again after a crash, one at a time
        self._resend_in_flight: str | None = None
        self._worker: _WorkerProcess | None = None
        self._number = 0
        self._crashes = 0  # consecutive deaths
        self._loading_deaths = 0  # consecutive deaths before the model was loaded
        self._ready_at: float | None = None
        self._restart_at: float | None = None  # wall-clock time of the next start after a crash
        self._restart_task: asyncio.Task[None] | None = None
        # request id → when it was sent to the current worker, oldest first, until the worker answers it
        self._unanswered: OrderedDict[str, float] = OrderedDict()
        self._watchdog: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state != "stopped":
            return  # idempotent: a reconnecting client calls it again
        self._set_state("starting")
        self._watchdog = asyncio.ensure_future(self._watch())
        await self._spawn()

    async def _spawn(self) -> None:
        self._number += 1
        self._ready_at = self._restart_at = None
        self._unanswered.clear()
        worker = _WorkerProcess(
            self._number, self.config, asyncio.get_running_loop(), self._on_message, self._on_exit, self._worker_target
        )
        self._worker = worker
        await asyncio.to_thread(worker.start)
        log.info(
            "model worker %d started (pid %s), loading %s", worker.number, worker.process.pid, self.config.model.id
        )

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

    def _unavailable_because(self) -> str | None:
        if self.state in ("ready", "starting"):
            return None  # loading: images wait for it
        if self.state == "restarting":
            wait = (self._restart_at or 0) - time.time()
            if wait <= self.config.worker.request_timeout_s:
                return None  # back before a new image's deadline: it waits
            return f"temporarily unavailable: the model worker keeps crashing; the next restart is in {wait:.0f} s"
        if self.state == "failed":
            return _NO_MODEL
        return "the worker is stopped"

    async def classify(self, request: ClassifyRequest, *, reservation: Reservation | None = None) -> ClassifyResult:
        if request.id in self._pending:
            if reservation is not None:
                reservation.release()
            return ClassifyResult.failure(request.id, ErrorCode.BAD_REQUEST, "duplicate request id")
        place = self._take_over(request, reservation)
        if isinstance(place, ClassifyResult):
            return place
        entry = _Pending(request, asyncio.get_running_loop().create_future(), place)
        self._pending[request.id] = entry
        try:
            if self.state == "ready":
                self._send(entry)
            else:  # loading or restarting: it goes as soon as a worker is ready
                self._waiting.append(request.id)
            return await asyncio.wait_for(asyncio.shield(entry.future), deadline_wait(request))
        except asyncio.TimeoutError:
            return timed_out(request)
        finally:
            self._forget(entry)

    def _forget(self, entry: _Pending) -> None:
        """The caller has its answer (or gave up): free the place, tell the worker if it holds it."""
        entry.place.release()
        request_id = entry.request.id
        if self._pending.get(request_id) is not entry:
            return
        del self._pending[request_id]
        if not entry.future.done() and entry.worker == self._number and self._worker is not None:
            self._worker.send(Cancel(request_id))  # gives the worker's queue place back
        if self._resend_in_flight == request_id:
            self._resend_in_flight = None
            self._send_next_resend()

    def _send(self, entry: _Pending) -> None:
        entry.attempts += 1
        entry.worker = self._number
        self._unanswered[entry.request.id] = time.monotonic()
        assert self._worker is not None  # requests are sent only while a worker is ready
        self._worker.send(Classify(entry.request))

    # ---- messages from the worker (on the loop) ------------------------------------------

    async def _watch(self) -> None:
        """Kill a worker that is alive but silent (a stuck GPU call, a deadlock): its requests
        would time out one after the other forever. The restart path then takes over.

        Every request sent gets exactly one message back (its result, or "cancelled" once the
        bot gives up at its deadline), so the oldest one still unanswered after the limit means
        a hung worker, even one that answered other requests since."""
        timeout = self.config.worker.request_timeout_s
        limit = timeout + max(_HUNG_MARGIN_S, timeout)
        while True:
            await asyncio.sleep(1.0)
            if self.state != "ready" or not self._unanswered or self._worker is None:
                continue
            request_id, sent = next(iter(self._unanswered.items()))
            silent = time.monotonic() - sent
            if silent > limit:
                log.error(
                    "model worker %d has not answered a request sent %.0f s ago; killing it (it will be restarted)",
                    self._worker.number,
                    silent,
                    extra={"request_id": request_id},
                )
                self._unanswered.clear()
                await asyncio.to_thread(self._worker.kill)

    def _on_message(self, number: int, message: FromWorker) -> None:
        if number != self._number or self.state == "stopped":
            return  # a dead incarnation's last words, or news after close()
        if isinstance(message, (Result, Cancelled)):
            request_id = message.result.id if isinstance(message, Result) else message.request_id
            self._unanswered.pop(request_id, None)
            if isinstance(message, Result):
                entry = self._pending.get(request_id)
                if entry is not None and entry.worker == number and not entry.future.done():
                    entry.future.set_result(message.result)
            if request_id == self._resend_in_flight:
                self._resend_in_flight = None
                self._send_next_resend()
        elif isinstance(message, Ready):
            if message.info.version != PROTOCOL_VERSION:  # a stale install beside a new bot
                self._on_message(
                    number,
                    Failed(
                        f"the model worker speaks protocol v{message.info.version}, "
                        f"this bot v{PROTOCOL_VERSION}: reinstall Wakeru"
                    ),
                )
                return
            self.info, self._ready_at, self._loading_deaths = message.info, time.monotonic(), 0
            self._set_state("ready")
            self.ready.set()
            log.info("model worker %d ready: %s", number, message.info)
            if self._resend:
                log.info("sending %d request(s) held by the dead worker again, one at a time", len(self._resend))
            self._send_next_resend()
            self._send_waiting()
        elif isinstance(message, Failed):
            self.failure = message.message
            self._set_state("failed")
            self.ready.set()
            log.error(
                'the model could not be loaded, so images are answered "unavailable": %s '
                "(fix it, then restart the bot)",
                message.message,
            )
            self._fail_all(ErrorCode.UNAVAILABLE, _NO_MODEL)

    def _on_exit(self, number: int, exitcode: int | None) -> None:
        if number != self._number or self.state in ("stopped", "failed"):
            return  # an orderly stop, or a load failure already reported
        uptime = None if self._ready_at is None else time.monotonic() - self._ready_at
        if uptime is not None and uptime >= self.config.worker.restart_reset_s:
            self._crashes = 0
        self._crashes += 1
        self._loading_deaths = 0 if uptime is not None else self._loading_deaths + 1
        held = [e for e in self._pending.values() if e.worker == number]
        log.error(
            "model worker %d died (%s) holding %d request(s)%s",
            number,
            describe_exit(exitcode),
            len(held),
            "" if uptime is None else f" after {uptime:.0f} s",
        )
        self._resend_in_flight = None
        for entry in held:
            entry.worker = None
            if entry.future.done():
                continue  # answered just before the death; its caller is about to collect it
            if entry.attempts >= 2:
                log.warning(
                    "request was in the worker at two crashes; answering it as crashed",
                    extra={"request_id": entry.request.id},
                )
                entry.future.set_result(
                    ClassifyResult.failure(
                        entry.request.id,
                        ErrorCode.CRASHED,
                        "the model worker died twice while handling this image; it was not tried again",
                    )
                )
            else:
                self._resend.append(entry.request.id)
        if self._loading_deaths >= _MAX_LOADING_DEATHS:
            hint = (
                "; give it more memory or choose a smaller model"
                if exitcode == -signal.SIGKILL
                else "; its log above says why"
            )
            self.failure = (
                f"the model worker died {self._loading_deaths} times while loading {self.config.model.id} "
                f"(last: {describe_exit(exitcode)}){hint}"
            )
            self._set_state("failed")
            self.ready.set()
            log.error("%s; not restarting it again", self.failure)
            self._fail_all(ErrorCode.UNAVAILABLE, _NO_MODEL)
            return
        cfg = self.config.worker
        delay = min(cfg.restart_backoff_max_s, cfg.restart_backoff_s * 2 ** min(self._crashes - 1, 30))
        log.warning("restarting the model worker in %.1f s (crash %d in a row)", delay, self._crashes)
        self._set_state("restarting")
        self._restart_at = time.time() + delay
        # images that would still be waiting for the restart at their deadline are told now
        late = [
            e
            for e in self._pending.values()
            if e.worker is None and e.request.deadline is not None and e.request.deadline < self._restart_at
        ]
        if late:
            self._fail_all(
                ErrorCode.UNAVAILABLE,
                f"temporarily unavailable: the model worker keeps crashing; the next restart is in {delay:.0f} s",
                late,
            )
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
            self._fail_all(ErrorCode.UNAVAILABLE, _NO_MODEL)

    def _send_next_resend(self) -> None:
        """Requests held by a dead worker go again one at a time: if one kills this worker
        too, it is the only one that was sent twice, and the only one refused."""
        if self.state != "ready" or self._resend_in_flight is not None:
            return
        while self._resend:
            entry = self._pending.get(self._resend.popleft())
            if entry is None or entry.future.done():
                continue
            self._resend_in_flight = entry.request.id
            log.info("sending a request again after a worker crash", extra={"request_id": entry.request.id})
            self._send(entry)
            return

    def _send_waiting(self) -> None:
        """Requests that arrived while the worker loaded or restarted: never sent yet, so all at once."""
        while self._waiting and self.state == "ready":
            entry = self._pending.get(self._waiting.popleft())
            if entry is not None and not entry.future.done() and entry.worker is None:
                self._send(entry)

    def _fail_all(self, code: ErrorCode, message: str, entries: Iterable[_Pending] | None = None) -> None:
        if entries is None:
            self._waiting.clear()
            self._resend.clear()
            self._resend_in_flight = None
        super()._fail_all(code, message, entries)


# What users see when there is no model; the cause (a path, a model id, a hint) goes to the log and /healthz.
_NO_MODEL = "the image model could not be loaded; the bot's operator can see why in its log"
