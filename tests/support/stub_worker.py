"""A torch-free stand-in for the local model worker, for tests of the bot's supervisor.

`run_stub_worker` has the signature of `model_worker.serving.pipe.run_local_worker` and is passed
as `LocalWorkerTransport(config, worker_target=run_stub_worker)` (or, for `python -m bot`, through
tests/support/stub_bot.py). `python -m tests.support.stub_worker serve` stands in for
`python -m model_worker serve` (tests/support/redis_server.py, WorkerProcess(..., worker="stub")):
the real command line and Redis consumer with this engine. Either starts in well under a second
where the real worker spends several seconds importing torch and transformers, so the supervisor's
scenarios (crash restarts, resends one at a time, the hang watchdog, deadlines, queue bounds,
shutdown, Redis failover) can each start as many workers as they need.

Only the model is replaced. The child runs the real pipe end (`model_worker.serving.pipe.serve`:
the typed messages of `wakeru.protocol`, exactly one Result or Cancelled per Classify, malformed
messages answered BAD_REQUEST), the real image decoder (`model_worker.image.decode`: numpy and
Pillow only, so a corrupt or unsupported image gets its proper ErrorCode), the real label rules
(`wakeru.labels`), the real fault injection (`model_worker.devtools.faults`, read from
WAKERU_FAULTS and armed only with WAKERU_ALLOW_FAULTS=1: crash_label, batch_delay_ms,
load_delay_ms) and the worker's logging (process "worker", one line per answer with its
request_id and outcome). A hang needs no fault of its own: tests SIGSTOP the worker.

What stands in for the model (`ShapeModel`), a documented rule for the pictures of
tests/support/shapes.py (a shape of one saturated colour on a light grey background):
  - colour: the pixels far from grey (max − min channel > 80, after a box downscale that averages
    out photo noise) are the shape; their strongest channel names the colour: red 赤い, green 緑の,
    blue 青い;
  - shape: how much of its bounding box the shape fills: a square about 100 %, a circle π/4 ≈ 79 %
    (threshold 88 %): 四角 or 丸;
  - the picture's class is colour + shape (e.g. 青い四角); without such pixels (a blank, a grey
    picture) it has none. Reliable for shapes.py pictures of 100 px and more; other pictures (the
    sample photos) get some class, which is all the tests ask of them.
Scoring a label: 6 for the class itself, otherwise 2 if it names the colour plus 1 if it names the
shape, else 0; the label shares are the softmax of these scores; `match` is 0.9 for the class and
at most 0.004 otherwise, so only the class itself `fits` (the SigLIP threshold is 0.01, CLIP's 0.5).

Embeddings (protocol 4: `embed`, `query`) are deterministic, L2-normalised, of the WorkerInfo's
embedding_size and tagged with its model key (`embed_image`, `embed_query`): each text has a unit
"direction" made from a hash of it. An image's embedding is its class's direction plus a quarter of
the direction of its bytes (no class: the bytes' direction alone); a query's is the direction of
its text plus a quarter of a second hash of it. So the same bytes always give the same vector (a
repost: cosine 1), two pictures of one class are close (about 0.94), and the query "赤い丸" ranks
pictures of a red circle above the others, as a search needs.

"Loading" mirrors the real loader where tests look: model.id must be a local directory (else
Failed, with the loader's own wording), the family and input size come from its config.json and
preprocessor_config.json, and every weights file in it is read to the end (a named pipe nobody
writes blocks the load, as it blocks the real one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from model_worker.devtools.faults import Faults
from model_worker.image.decode import DecodeLimits, ImageError, decode_image
from model_worker.serving import pipe
from wakeru.config import Config
from wakeru.labels import LabelError, normalise_labels
from wakeru.protocol import (
    MAX_QUERY_LENGTH,
    PROTOCOL_VERSION,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    Failed,
    LabelScore,
    Ready,
    Timings,
    WorkerInfo,
    model_key,
    request_shape_problem,
)

log = logging.getLogger("wakeru.worker")

COLOURS = {0: "赤い", 1: "緑の", 2: "青い"}  # strongest channel (R, G, B) → the colour word of shapes.py
SQUARE, CIRCLE = "四角", "丸"
_SATURATED = 80  # max − min channel above this: the shape's colour, not the grey background or clutter
_SQUARE_FILL = 0.88  # share of its bounding box a shape fills: square ≈ 1.0, circle ≈ π/4
_MIN_SHAPE = 0.005  # share of the picture the coloured pixels must cover to count as a shape
_WORK_SIDE = 128  # pictures are box-downscaled to at most this side first (fast; averages out noise)
_SIGMOID_THRESHOLD, _REFERENCE_THRESHOLD = 0.01, 0.5  # the real adapters' default match thresholds


def predict(image: Image.Image) -> str | None:
    """The class of a shapes.py picture (e.g. "青い四角"), or None when there is no coloured shape."""
    im = image.convert("RGB")
    if max(im.size) > _WORK_SIDE:
        im = im.copy()
        im.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.Resampling.BOX)
    rgb = np.asarray(im, dtype=np.int16)
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > _SATURATED
    if saturated.sum() < max(4, _MIN_SHAPE * saturated.size):
        return None
    channel = np.bincount(rgb[saturated].argmax(axis=1), minlength=3).argmax()
    mask = saturated & (rgb.argmax(axis=2) == channel)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    shape = SQUARE if mask.sum() / box >= _SQUARE_FILL else CIRCLE
    return COLOURS[int(channel)] + shape


def score(predicted: str | None, label: str) -> int:
    if predicted is None:
        return 0
    if label == predicted:
        return 6
    shape = SQUARE if predicted.endswith(SQUARE) else CIRCLE
    colour = predicted[: -len(shape)]
    return 2 * (colour in label) + (shape in label)


def rank(predicted: str | None, labels: tuple[str, ...], top_k: int, threshold: float) -> tuple[LabelScore, ...]:
    scores = [score(predicted, label) for label in labels]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    order = sorted(range(len(labels)), key=lambda i: (-scores[i], i))[: max(1, min(top_k, len(labels)))]
    out = []
    for i in order:
        match = 0.9 if scores[i] == 6 else 0.001 * (1 + scores[i])
        out.append(LabelScore(labels[i], weights[i] / total, match, match >= threshold))
    return tuple(out)


def direction(data: bytes, size: int) -> np.ndarray:
    """A deterministic unit vector of `size` float32 values from a hash of `data`."""
    stream = b"".join(hashlib.sha256(data + i.to_bytes(4, "little")).digest() for i in range(-(-size * 4 // 32)))
    values = np.frombuffer(stream[: size * 4], dtype="<u4").astype(np.float64) / 2**32 - 0.5
    return (values / np.linalg.norm(values)).astype(np.float32)


def _unit(vector: np.ndarray) -> bytes:
    return (vector / np.linalg.norm(vector)).astype("<f4").tobytes()


def embed_image(predicted: str | None, image: bytes, size: int) -> bytes:
    """The stub's image embedding (packed, see wakeru.protocol.pack_embedding): class + bytes."""
    own = direction(b"image\0" + image, size)
    if predicted is None:
        return _unit(own)
    return _unit(direction(predicted.encode(), size) + 0.25 * own)


def embed_query(text: str, size: int) -> bytes:
    """The stub's query embedding: the text's direction (a class name's is its pictures' class direction)."""
    return _unit(direction(text.encode(), size) + 0.25 * direction(b"query\0" + text.encode(), size))


class ShapeModel:
    """The "adapter": what Faults.install slows down (encode_images) and what Ready reports."""

    def __init__(self, model_dir: Path):
        config = _read_json(model_dir / "config.json")
        processor = _read_json(model_dir / "preprocessor_config.json")
        kind = str(config.get("model_type", "siglip"))
        self.family = (
            "japanese-stable-clip"
            if "auto_map" in config
            else {"siglip2": "siglip2", "clip": "clip"}.get(kind, "siglip")
        )
        self.device, self.dtype = "cpu", "float32"
        size = processor.get("size") or {}
        side = size.get("shortest_edge") or max(size.get("height", 0), size.get("width", 0)) or 224
        self.input_size = int(side)
        self.preprocessor = SimpleNamespace(draft_size=(self.input_size, self.input_size))  # for worker_info
        vision = config.get("vision_config") or {}
        self.embedding_size = int(config.get("projection_dim") or vision.get("hidden_size") or 32)
        self.match_threshold = _SIGMOID_THRESHOLD if self.family.startswith("siglip") else _REFERENCE_THRESHOLD

    def encode_images(self, images: list[Image.Image]) -> list[str | None]:
        return [predict(im) for im in images]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass(eq=False)
class _Job:
    request: ClassifyRequest
    labels: tuple[str, ...]
    future: Future
    submitted: float
    query: str | None = None
    decode_ms: float = 0.0
    done: bool = field(default=False)


class StubEngine:
    """What `pipe.serve` needs of model_worker.model.engine.Engine: submit() → a Future that always
    resolves to a ClassifyResult (a cancel frees the place at once), close(). Bounded by
    worker.queue_size (QUEUE_FULL beyond it); batches of up to worker.max_batch, gathered for up
    to worker.max_wait_ms; a request past its deadline when its batch starts is DEADLINE_EXCEEDED."""

    def __init__(self, adapter: ShapeModel, config: Config):
        self.adapter = adapter
        self.config = config
        self.limits = DecodeLimits.from_config(config.images)
        self.max_batch = config.worker.max_batch
        self.max_wait = config.worker.max_wait_ms / 1000.0
        threshold = config.model.match_threshold
        self.match_threshold = adapter.match_threshold if threshold is None else threshold
        self.model_key = model_key(config.model.id, config.model.revision)
        self._capacity = config.worker.queue_size
        self._in_flight = 0
        self._jobs: set[_Job] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stub-batcher", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, request: ClassifyRequest) -> Future:
        future: Future = Future()
        valid = self._validate(request)
        if isinstance(valid, ClassifyResult):
            future.set_result(valid)
            return future
        labels, query = valid
        with self._lock:
            if self._closed:
                future.set_result(
                    ClassifyResult.failure(request.id, ErrorCode.UNAVAILABLE, "the model worker is shutting down")
                )
                return future
            if self._in_flight >= self._capacity:
                future.set_result(
                    ClassifyResult.failure(
                        request.id,
                        ErrorCode.QUEUE_FULL,
                        f"the model is busy ({self._in_flight} images waiting); try again in a moment",
                    )
                )
                return future
            self._in_flight += 1
            job = _Job(request, labels, future, time.perf_counter(), query)
            self._jobs.add(job)
        future.add_done_callback(lambda f, job=job: self._finish(job, None) if f.cancelled() else None)
        self._queue.put(job)
        return future

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        with self._lock:
            leftovers = list(self._jobs)
        for job in leftovers:
            self._fail(job, ErrorCode.UNAVAILABLE, "the model worker shut down before this image was processed")

    def _validate(self, request: ClassifyRequest) -> ClassifyResult | tuple[tuple[str, ...], str | None]:
        """(labels, query) as the real engine normalises them, or the answer that refuses the request."""
        rid = request.id
        if request.version != PROTOCOL_VERSION:
            return ClassifyResult.failure(
                rid,
                ErrorCode.BAD_REQUEST,
                f"protocol version {request.version!r} is not {PROTOCOL_VERSION}; update the bot and worker together",
            )
        if not isinstance(request.top_k, int) or request.top_k < 1:
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, f"top_k must be ≥ 1, not {request.top_k!r}")
        problem = request_shape_problem(request)
        if problem is not None:
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, problem)
        if request.query is not None:
            try:
                (query,) = normalise_labels([request.query], max_count=1, max_length=MAX_QUERY_LENGTH)
            except LabelError as e:
                why = "the query is empty" if e.code == "empty" else f"query: {e}"
                return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, why)
            return (), query
        if not request.labels:  # embed only
            return (), None
        cfg = self.config.labels
        try:
            return normalise_labels(request.labels, max_count=cfg.max_count, max_length=cfg.max_length), None
        except (LabelError, TypeError) as e:
            return ClassifyResult.failure(rid, ErrorCode.BAD_LABELS, str(e))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            until = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, until - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            try:
                self._process(batch)
            except Exception:  # never leave a request unanswered
                log.exception("stub batcher failed")
                for job in batch:
                    self._fail(job, ErrorCode.INTERNAL, "the worker hit an internal error")
            if stop:
                return

    def _process(self, batch: list[_Job]) -> None:
        started, now = time.perf_counter(), time.time()
        live, images = [], []
        for job in batch:
            if job.future.cancelled():
                continue
            if job.query is not None:  # no image: its text's embedding
                if job.request.deadline is not None and now > job.request.deadline:
                    self._fail(job, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited")
                    continue
                self._finish(
                    job,
                    ClassifyResult(
                        id=job.request.id,
                        timings=self._timings(job, started),
                        embedding=embed_query(job.query, self.adapter.embedding_size),
                        embedding_model=self.model_key,
                    ),
                )
                continue
            t0 = time.perf_counter()
            try:
                image = decode_image(bytes(job.request.image), self.limits, (self.adapter.input_size,) * 2)
            except ImageError as e:
                self._fail(job, e.code, e.message)
                continue
            job.decode_ms = (time.perf_counter() - t0) * 1000
            if job.request.deadline is not None and now > job.request.deadline:
                self._fail(job, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited")
                continue
            live.append(job)
            images.append(image)
        if not live:
            return
        model_started = time.perf_counter()
        predictions = self.adapter.encode_images(images)  # batch_delay_ms (Faults.install) slows this down
        model_ms = (time.perf_counter() - model_started) * 1000
        for job, predicted in zip(live, predictions):
            top = rank(predicted, job.labels, job.request.top_k, self.match_threshold) if job.labels else ()
            embedding = None
            if job.request.embed:
                embedding = embed_image(predicted, bytes(job.request.image), self.adapter.embedding_size)
            self._finish(
                job,
                ClassifyResult(
                    id=job.request.id,
                    top=top,
                    timings=self._timings(job, started, model_ms, len(live)),
                    embedding=embedding,
                    embedding_model=self.model_key if embedding is not None else None,
                ),
            )

    def _timings(self, job: _Job, started: float, model_ms: float = 0.0, batch_size: int = 0) -> Timings:
        return Timings(
            queue_ms=(started - job.submitted) * 1000,
            decode_ms=job.decode_ms,
            model_ms=model_ms,
            total_ms=(time.perf_counter() - job.submitted) * 1000,
            batch_size=batch_size,
        )

    def _fail(self, job: _Job, code: ErrorCode, message: str) -> None:
        self._finish(
            job, ClassifyResult.failure(job.request.id, code, message, self._timings(job, time.perf_counter()))
        )

    def _finish(self, job: _Job, result: ClassifyResult | None) -> None:
        """Answer a job once (None: it was cancelled) and give its place back."""
        with self._lock:
            if job.done:
                return
            job.done = True
            self._jobs.discard(job)
            self._in_flight -= 1
        if result is not None:
            try:
                job.future.set_result(result)
            except InvalidStateError:  # cancelled meanwhile: serve() acknowledges it as Cancelled
                pass


def load(config: Config) -> StubEngine:
    """Like model_worker.serving.startup.load_engine, for a model directory; raises _LoadError."""
    model_dir = Path(config.model.id).expanduser()
    if not model_dir.is_dir():
        raise _LoadError(f"model directory {config.model.id} does not exist; check model.id")
    for weights in sorted(model_dir.iterdir()):
        if weights.suffix in (".safetensors", ".bin"):
            with open(weights, "rb") as f:  # a named pipe nobody writes blocks here, as in the real loader
                while f.read(1 << 20):
                    pass
    return StubEngine(ShapeModel(model_dir), config)


class _LoadError(Exception):
    pass


def run_stub_worker(
    config_data: dict, requests, results_conn, log_format: str = "text", log_level: int = logging.INFO
) -> None:
    """Child-process entry, called as run_local_worker is: load, report Ready/Failed, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bot decides when its worker stops
    signal.signal(signal.SIGTERM, pipe._exit_later)
    results = pipe._Results(results_conn)
    try:
        _load_and_serve(config_data, requests, results, log_format, log_level)
    except BaseException as e:
        log.exception("the stub worker failed")
        results.send(Failed(f"{type(e).__name__}: {e}"))


def _load_and_serve(config_data: dict, requests, results, log_format: str, log_level: int) -> None:
    from wakeru.logs import setup_logging

    setup_logging(log_format, log_level, process="worker")
    config = Config.model_validate(config_data)
    faults = Faults.from_env() if os.environ.get("WAKERU_FAULTS", "").strip() else None
    try:
        if faults is not None:
            faults.before_load()
        engine = load(config)
    except _LoadError as e:
        log.error("model could not be loaded: %s", e)
        results.send(Failed(str(e)))
        return
    adapter = engine.adapter
    log.info("stub worker (tests only: colour and shape rules, no model) ready for %s", config.model.id)
    results.send(
        Ready(
            WorkerInfo(
                model=config.model.id,
                revision=config.model.revision or "",
                family=adapter.family,
                device=adapter.device,
                dtype=adapter.dtype,
                input_size=adapter.input_size,
                embedding_size=adapter.embedding_size,
                pid=os.getpid(),
            )
        )
    )
    if faults is not None:
        faults.install(engine)
    try:
        pipe.serve(engine, requests, results, faults)
    finally:
        engine.close(timeout=10)
        log.info("worker stopped")


def serve_main(argv: list[str]) -> int:
    """`python -m model_worker serve …` (model_worker.cli) with this engine instead of the model."""
    from model_worker import cli

    cli.load_engine = load  # type: ignore[assignment]
    cli.quiet_libraries = lambda verbose: None  # it would import transformers
    return cli.main(argv)


def make_model_dir(path: Path, *, family: str = "siglip", input_size: int = 32) -> Path:
    """A directory the stub loads like a checkpoint: config.json, preprocessor_config.json and a
    small weights file (no real weights: the stub has no model)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": family, "projection_dim": 32}))
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": input_size, "width": input_size}}))
    (path / "model.safetensors").write_bytes(b"\0" * 1024)
    return path


if __name__ == "__main__":  # `python -m tests.support.stub_worker serve …`
    sys.exit(serve_main(sys.argv[1:]))
