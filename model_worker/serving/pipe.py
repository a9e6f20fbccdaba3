"""The worker's end of the local transport: a spawned process serving a request pipe.

The bot starts `run_local_worker` in a child process (spawn context) with two
one-way pipes, and they speak the typed messages of `wakeru.protocol`:

  bot → worker  Classify(request) | Cancel(request_id) | Stop()
  worker → bot  Ready(WorkerInfo) | Failed(message) | Result(result) | Cancelled(request_id)

Every Classify gets exactly one Result or Cancelled back, which is what the bot's hang
watchdog relies on.

Each end holds only its own side of each pipe, so when either process dies the
other reads EOF at once: the bot notices a killed worker immediately, and a worker
whose bot is gone stops instead of holding the GPU.

This module is imported by the bot process (to name the spawn target), so it must
not import torch at module level: the engine loads inside the child only.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from wakeru.protocol import (
    Cancel,
    Cancelled,
    Classify,
    ClassifyResult,
    ErrorCode,
    Failed,
    FromWorker,
    ProtocolError,
    Ready,
    Result,
    Stop,
    decode_to_worker,
    encode,
)

if TYPE_CHECKING:
    from model_worker.devtools.faults import Faults

log = logging.getLogger("wakeru.worker")


class _Results:
    """The result pipe, written from the engine's threads: one message at a time."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: FromWorker) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._conn.send(encode(message))
            except (BrokenPipeError, EOFError, OSError):
                self.broken = True  # the bot is gone; serve() notices on its next read


def _log_result(result: ClassifyResult) -> None:
    t = result.timings
    if result.error is None:  # result.ok
        log.debug(
            "answered",
            extra={
                "request_id": result.id,
                "outcome": "ok",
                "queue_ms": round(t.queue_ms, 1),
                "decode_ms": round(t.decode_ms, 1),
                "model_ms": round(t.model_ms, 1),
                "total_ms": round(t.total_ms, 1),
                "batch_size": t.batch_size,
            },
        )
    else:
        log.info(
            "answered with %s: %s",
            result.error.value,
            result.message,
            extra={"request_id": result.id, "outcome": result.error.value},
        )


def serve(engine, requests, results, faults: Faults | None = None) -> None:
    """Feed pipe messages into the engine until Stop or the bot's end closes."""
    out = results if isinstance(results, _Results) else _Results(results)
    futures: dict[str, Any] = {}

    def answer(request_id: str, future) -> None:
        futures.pop(request_id, None)
        if future.cancelled():  # the bot gave up on it; an acknowledgement keeps its watchdog informed
            out.send(Cancelled(request_id))
            return
        result = future.result()
        _log_result(result)
        out.send(Result(result))

    while not out.broken:
        try:
            if not requests.poll(1.0):
                continue
            raw = requests.recv()
        except (EOFError, OSError):  # the bot end closed: the bot stopped or died
            log.warning("the bot's end of the request pipe closed; stopping")
            break
        try:
            message = decode_to_worker(raw)
        except ProtocolError as e:  # answered when it names a request, so its sender is not left waiting
            if e.request_id is None:
                log.warning("dropping a malformed message without a request id: %s", e)
            else:
                out.send(Result(ClassifyResult.failure(e.request_id, ErrorCode.BAD_REQUEST, "malformed request")))
            continue
        if isinstance(message, Stop):
            break
        if isinstance(message, Cancel):
            future = futures.get(message.request_id)
            if future is not None:
                future.cancel()
            continue
        assert isinstance(message, Classify)
        request = message.request
        if faults is not None:
            faults.check_request(request.labels)
        future = engine.submit(request)
        futures[request.id] = future
        future.add_done_callback(lambda f, rid=request.id: answer(rid, f))


def run_local_worker(
    config_data: dict, requests, results_conn, log_format: str = "text", log_level: int = logging.INFO
) -> None:
    """Child-process entry: load the model, report ready/failed, then serve."""
    # Ctrl-C, and SIGTERM from systemd (which signals the whole group), reach the worker as
    # well as the bot; the bot decides when the worker stops, after its grace period. A SIGTERM
    # only starts a generous timer, so a worker whose bot never says "stop" still exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_later)
    results = _Results(results_conn)
    try:
        _load_and_serve(config_data, requests, results, log_format, log_level)
    except BaseException as e:  # a broken install, a bad environment: the bot must hear why
        log.exception("the model worker failed")
        results.send(Failed(f"{type(e).__name__}: {e}"))


def _exit_later(signum, frame) -> None:
    timer = threading.Timer(60.0, os._exit, (0,))
    timer.daemon = True
    timer.start()


def _load_and_serve(config_data: dict, requests, results: _Results, log_format: str, log_level: int) -> None:
    from wakeru.logs import setup_logging

    setup_logging(log_format, log_level, process="worker")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from model_worker.model.loading import ModelLoadError
    from model_worker.serving.startup import armed_faults, load_engine, quiet_libraries, worker_info
    from wakeru.config import Config

    config = Config.model_validate(config_data)
    quiet_libraries(verbose=False)
    faults = armed_faults()
    try:
        if faults is not None:
            faults.before_load()
        engine = load_engine(config)
    except ModelLoadError as e:
        log.error("model could not be loaded: %s", e)
        results.send(Failed(str(e)))
        return
    except MemoryError:
        why = (
            f"out of memory while loading {config.model.id}: give the worker more RAM, or choose a smaller "
            "model or model.dtype bfloat16"
        )
        log.error("model could not be loaded: %s", why)
        results.send(Failed(why))
        return
    except Exception as e:  # a broken install, a bug: the bot must hear about it
        log.exception("model could not be loaded")
        results.send(Failed(f"{type(e).__name__}: {e}"))
        return
    results.send(Ready(worker_info(config, engine)))
    if faults is not None:
        faults.install(engine)
    try:
        serve(engine, requests, results, faults)
    finally:
        engine.close(timeout=10)
        log.info("worker stopped")
