"""The worker's end of the local transport: a spawned process serving a request queue.

The bot starts `run_local_worker` in a child process (spawn context) with two
multiprocessing queues. Messages are plain tuples of protocol dicts so both ends
stay independent of each other's classes:

  bot → worker  ("classify", request_dict) | ("cancel", request_id) | ("stop", None)
  worker → bot  ("ready", info) | ("failed", message) | ("result", result_dict)

This module is imported by the bot process (to name the spawn target), so it must
not import torch at module level: the engine loads inside the child only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
from typing import Any

from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode

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


def serve(engine, requests, results) -> None:
    """Feed queue messages into the engine until ("stop", None) or the queue's end."""
    futures: dict[str, Any] = {}

    def answer(request_id: str, future) -> None:
        futures.pop(request_id, None)
        if future.cancelled():
            return  # the bot gave up on it; nobody is waiting
        results.put(("result", future.result().to_dict()))

    parent = multiprocessing.parent_process()
    while True:
        try:
            message = requests.get(timeout=1.0)
        except queue.Empty:
            # The child holds both ends of the pipe, so a killed bot never shows up as EOF:
            # look at the parent instead, or this process would keep the GPU forever.
            if parent is not None and not parent.is_alive():
                log.warning("the bot process is gone; stopping")
                break
            continue
        except (EOFError, OSError):  # the bot end closed
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
                results.put(("result", failure.to_dict()))
            continue
        future = engine.submit(request)
        futures[request.id] = future
        future.add_done_callback(lambda f, rid=request.id: answer(rid, f))


def run_local_worker(config_data: dict, requests, results) -> None:
    """Child-process entry: load the model, report ready/failed, then serve."""
    # Ctrl-C reaches the whole process group; the bot decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from wakeru.config import Config

    from .cli import _quiet_libraries, load_engine
    from .loading import ModelLoadError

    config = Config.model_validate(config_data)
    _quiet_libraries(verbose=False)
    try:
        engine = load_engine(config)
    except ModelLoadError as e:
        log.error("model could not be loaded: %s", e)
        results.put(("failed", str(e)))
        return
    except Exception as e:  # out of memory, a broken install: the bot must hear about it
        log.exception("model could not be loaded")
        results.put(("failed", f"{type(e).__name__}: {e}"))
        return
    adapter = engine.adapter
    results.put(("ready", {"model": config.model.id, "family": adapter.family,
                           "device": str(adapter.device), "dtype": str(adapter.dtype).replace("torch.", ""),
                           "input_size": adapter.preprocessor.draft_size[0],
                           "pid": os.getpid()}))
    try:
        serve(engine, requests, results)
    finally:
        engine.close(timeout=10)
        log.info("worker stopped")
