"""The worker's end of the local transport: a spawned process serving a request pipe.

The bot starts `run_local_worker` in a child process (spawn context) with two
one-way pipes. Messages are plain tuples of protocol dicts so both ends stay
independent of each other's classes:

  bot → worker  ("classify", request_dict) | ("cancel", request_id) | ("stop", None)
  worker → bot  ("ready", info) | ("failed", message) | ("result", result_dict)

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
from typing import Any

from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode

from .faults import Faults

log = logging.getLogger("wakeru.worker")


def _bad_message(message: Any) -> ClassifyResult | None:
    """A request that cannot even be parsed still gets an answer when it carries an id."""
    request_id = None
    if isinstance(message, tuple) and len(message) == 2 and isinstance(message[1], dict):
        request_id = message[1].get("id")
    if not isinstance(request_id, str):
        log.warning("dropping a malformed message without a request id: %.200r", message)
        return None
    return ClassifyResult.failure(request_id, ErrorCode.BAD_REQUEST, "malformed request")


class _Results:
    """The result pipe, written from the engine's threads: one message at a time."""

    def __init__(self, conn):
        self._conn = conn
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._conn.send(message)
            except (BrokenPipeError, EOFError, OSError):
                self.broken = True  # the bot is gone; serve() notices on its next read


def _log_result(result: ClassifyResult) -> None:
    t = result.timings
    if result.ok:
        log.debug("answered", extra={"request_id": result.id, "outcome": "ok", "queue_ms": round(t.queue_ms, 1),
                                     "decode_ms": round(t.decode_ms, 1), "model_ms": round(t.model_ms, 1),
                                     "total_ms": round(t.total_ms, 1), "batch_size": t.batch_size})
    else:
        log.info("answered with %s: %s", result.error.value, result.message,
                 extra={"request_id": result.id, "outcome": result.error.value})


def serve(engine, requests, results, faults: Faults = Faults()) -> None:
    """Feed pipe messages into the engine until ("stop", None) or the bot's end closes."""
    out = results if isinstance(results, _Results) else _Results(results)
    futures: dict[str, Any] = {}

    def answer(request_id: str, future) -> None:
        futures.pop(request_id, None)
        if future.cancelled():  # the bot gave up on it; an acknowledgement keeps its watchdog informed
            out.send(("cancelled", request_id))
            return
        result = future.result()
        _log_result(result)
        out.send(("result", result.to_dict()))

    while not out.broken:
        try:
            if not requests.poll(1.0):
                continue
            message = requests.recv()
        except (EOFError, OSError):  # the bot end closed: the bot stopped or died
            log.warning("the bot's end of the request pipe closed; stopping")
            break
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "stop":
            break
        if kind == "cancel":
            future = futures.get(message[1])
            if future is not None:
                future.cancel()
            continue
        try:
            if kind != "classify":
                raise ValueError(kind)
            request = ClassifyRequest.from_dict(message[1])
        except Exception:
            failure = _bad_message(message)
            if failure is not None:
                out.send(("result", failure.to_dict()))
            continue
        faults.check_request(request.labels)
        future = engine.submit(request)
        futures[request.id] = future
        future.add_done_callback(lambda f, rid=request.id: answer(rid, f))


def run_local_worker(config_data: dict, requests, results_conn, log_format: str = "text",
                     log_level: int = logging.INFO) -> None:
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
        results.send(("failed", f"{type(e).__name__}: {e}"))


def _exit_later(signum, frame) -> None:
    timer = threading.Timer(60.0, os._exit, (0,))
    timer.daemon = True
    timer.start()


def _load_and_serve(config_data: dict, requests, results: _Results, log_format: str, log_level: int) -> None:
    from wakeru.logs import setup_logging

    setup_logging(log_format, log_level, process="worker")
    faults = Faults.from_env()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from wakeru.config import Config

    from .cli import _quiet_libraries, load_engine
    from .loading import ModelLoadError

    config = Config.model_validate(config_data)
    _quiet_libraries(verbose=False)
    try:
        faults.before_load()
        engine = load_engine(config)
    except ModelLoadError as e:
        log.error("model could not be loaded: %s", e)
        results.send(("failed", str(e)))
        return
    except MemoryError:
        why = (f"out of memory while loading {config.model.id}: give the worker more RAM, or choose a smaller "
               "model or model.dtype bfloat16")
        log.error("model could not be loaded: %s", why)
        results.send(("failed", why))
        return
    except Exception as e:  # a broken install, a bug: the bot must hear about it
        log.exception("model could not be loaded")
        results.send(("failed", f"{type(e).__name__}: {e}"))
        return
    adapter = engine.adapter
    results.send(("ready", {"model": config.model.id, "family": adapter.family,
                           "device": str(adapter.device), "dtype": str(adapter.dtype).replace("torch.", ""),
                           "input_size": adapter.preprocessor.draft_size[0],
                           "pid": os.getpid()}))
    faults.install(engine)
    try:
        serve(engine, requests, results, faults)
    finally:
        engine.close(timeout=10)
        log.info("worker stopped")
