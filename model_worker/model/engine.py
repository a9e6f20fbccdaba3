"""The batching engine: requests in, results out, the model kept busy.

  submit() ──► decode pool (threads: bytes → RGB → uint8 model input)
                  │ ready queue
                  ▼
            batcher thread: takes every ready image up to max_batch, waits up to
            max_wait_ms only while more images are still being decoded, runs the
            vision tower once for the images whose label sets are known, scores each
            against its own set; then puts a few labels of a new set through the
            text tower, and goes round again.

Decoding of the next batch overlaps the forward pass of the current one (torch
releases the GIL). A request with a label set the cache does not know yet waits,
decoded, while its labels are encoded a step (_TEXT_STEP_LABELS labels) at a time
between image batches, taking at most _TEXT_SHARE of the time while images wait: a new
100-label set slows the other images down by a quarter at worst, instead of stopping
them for 300 prompts in one go. At most `queue_size` requests are
in flight; past that, submit() answers QUEUE_FULL at once. A bad image, a bad label
set or a failing batch only fails the requests concerned; the engine keeps running.

Embeddings (for the bot's image index): a request with `embed` also gets its image's row of the
batch's image embeddings (the same forward pass, L2-normalised float32, packed), and with no labels
it gets only that (no label set is looked up or scored). A `query` request has no image: it skips
the decode pool and its text is embedded in the batcher thread between image batches, like label
work (and within the same share of the time), by the label cache's template ensemble, so a query
and a label of the same words get the same vector. Queries never enter the label cache: they have
an LRU of their own (_QUERY_CACHE entries). Every embedding names the model that made it
(wakeru.protocol.model_key of model.id and model.revision).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_worker.image.decode import DecodeLimits, ImageError, decode_image
from model_worker.model.adapters import Adapter
from model_worker.model.label_cache import _LRU, LabelEmbeddingCache
from wakeru.config import Config
from wakeru.labels import LabelError, normalise_labels
from wakeru.protocol import (
    MAX_QUERY_LENGTH,
    PROTOCOL_VERSION,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    LabelScore,
    Timings,
    model_key,
    request_shape_problem,
)

log = logging.getLogger(__name__)

# Labels of a new set put through the text tower in one step (× the templates: 8 labels × 3
# templates cost about one small image batch), so known-label images wait at most one such step.
_TEXT_STEP_LABELS = 8
# While images are waiting, new label sets get at most this share of the batcher's time (the rest
# goes to the images); with nothing else to do, they get all of it.
_TEXT_SHARE = 0.25
# Search queries embedded in one text step (× the templates, like labels), and how many query
# embeddings the engine keeps (the same search again costs no text-tower work).
_QUERY_STEP = 8
_QUERY_CACHE = 256


class _Idle:
    """The type of _IDLE, so a job or None can be told from it."""


_IDLE = _Idle()  # the batcher found no new job: it has label work of its own to do


@dataclass(eq=False)
class _Job:
    request: ClassifyRequest
    labels: tuple[str, ...]  # normalised; () for an embed-only or a query request
    future: Future[ClassifyResult]
    submitted: float
    query: str | None = None  # the normalised search query (a query request)
    prepared: dict[str, Any] | None = None
    error: tuple[ErrorCode, str] | None = None
    decode_ms: float = 0.0
    finished: bool = False  # guarded by Engine._lock: each job is answered (and counted) once


@dataclass(eq=False)
class _LabelWork:
    """A label set that decoded jobs wait for, encoded a step at a time between image batches."""

    labels: tuple[str, ...]
    vectors: dict[str, torch.Tensor]  # embeddings gathered so far
    todo: deque[str]  # labels still to encode, in order
    jobs: list[_Job]


@dataclass
class EngineStats:
    batches: int = 0
    images: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))  # the most recent ones
    refused_busy: int = 0
    cancelled: int = 0
    text_steps: int = 0  # text-tower steps run for label sets that were not cached
    queries: int = 0  # search queries embedded (cache hits included)


class Engine:
    def __init__(self, adapter: Adapter, config: Config):
        self.adapter = adapter
        self.config = config
        self.limits = DecodeLimits.from_config(config.images)
        self.max_batch = config.worker.max_batch
        self.max_wait = config.worker.max_wait_ms / 1000.0
        self.cache = LabelEmbeddingCache(
            adapter.encode_texts, model_key=adapter.cache_key, templates=config.model.templates
        )
        threshold = config.model.match_threshold
        self.match_threshold = adapter.default_match_threshold if threshold is None else threshold
        # CLIP family: `match` compares each label with this neutral description (encoded once, now)
        self.reference = None if adapter.has_match_probability() else self.cache.get((config.model.reference_label,))
        self.stats = EngineStats()
        self.model_key = model_key(config.model.id, config.model.revision)  # what its embeddings are tagged with
        self._queries: deque[_Job] = deque()  # batcher thread only: query jobs waiting for the text tower
        self._query_cache: _LRU = _LRU(_QUERY_CACHE)  # batcher thread only: query text → embedding (CPU)
        self._label_work: dict[tuple[str, ...], _LabelWork] = {}  # batcher thread only; oldest first
        self._unparked: deque[_Job] = deque()  # decoded jobs whose label set just became known
        self._text_s = self._image_s = 0.0  # batcher time spent on each while label work is pending
        self._pool = ThreadPoolExecutor(config.worker.resolved_decode_threads(), thread_name_prefix="wakeru-decode")
        self._ready: queue.Queue[_Job | None] = queue.Queue()
        self._capacity = config.worker.queue_size
        self._in_flight = 0
        self._decoding = 0
        self._jobs: set[_Job] = set()  # accepted and not yet answered
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wakeru-batcher", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------

    def submit(self, request: ClassifyRequest) -> Future[ClassifyResult]:
        """Queue one request; the future always resolves to a ClassifyResult (never raises).

        A caller may cancel the future (a timeout, a user gone): the request then gives
        its place back and, if it has not reached the model yet, costs no model time."""
        future: Future[ClassifyResult] = Future()
        rejection = self._validate(request)
        if isinstance(rejection, ClassifyResult):
            future.set_result(rejection)
            return future
        labels, query = rejection
        with self._lock:
            if self._closed:
                future.set_result(
                    ClassifyResult.failure(request.id, ErrorCode.UNAVAILABLE, "the model worker is shutting down")
                )
                return future
            if self._in_flight >= self._capacity:
                self.stats.refused_busy += 1
                future.set_result(
                    ClassifyResult.failure(
                        request.id,
                        ErrorCode.QUEUE_FULL,
                        f"the model is busy ({self._in_flight} images waiting); try again in a moment",
                    )
                )
                return future
            self._in_flight += 1
            job = _Job(request, labels, future, time.perf_counter(), query=query)
            self._jobs.add(job)
            # a cancel frees the place at once, even while the model is busy
            future.add_done_callback(lambda f: self._finish(job, None) if f.cancelled() else None)
            if query is not None:  # no image to decode: straight to the batcher (before close()'s None)
                self._ready.put(job)
            else:
                self._decoding += 1
                # under the lock, so close() cannot shut the pool between the check and this
                self._pool.submit(self._prepare, job)
        return future

    def classify(self, requests: Iterable[ClassifyRequest]) -> list[ClassifyResult]:
        """Submit all, wait for all (results in input order)."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def stream(self, requests: Iterable[ClassifyRequest], window: int | None = None) -> Iterator[ClassifyResult]:
        """Results in input order, keeping at most `window` requests in flight (default:
        the queue size), so any number of inputs can be fed without a QUEUE_FULL."""
        window = max(1, min(window or self._capacity, self._capacity))
        pending: deque[Future[ClassifyResult]] = deque()
        for request in requests:
            if len(pending) >= window:
                yield pending.popleft().result()
            pending.append(self.submit(request))
        while pending:
            yield pending.popleft().result()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting work, finish what was accepted within `timeout` seconds, stop the
        threads. Whatever is still unanswered then gets UNAVAILABLE."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=False)
        # let the decodes already accepted finish, but never wait past the deadline
        while self._decoding > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._decoding > 0:  # out of time: drop the decodes that have not started
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._ready.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._jobs)
        for job in leftovers:
            self._finish_error(job, ErrorCode.UNAVAILABLE, "the model worker shut down before this image was processed")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- stages -------------------------------------------------------------------

    def _validate(self, request: ClassifyRequest) -> ClassifyResult | tuple[tuple[str, ...], str | None]:
        """(normalised labels, normalised query) of a valid request, else the answer that refuses it."""
        rid = getattr(request, "id", "?")
        if getattr(request, "version", None) != PROTOCOL_VERSION:
            return ClassifyResult.failure(
                rid,
                ErrorCode.BAD_REQUEST,
                f"protocol version {getattr(request, 'version', None)!r} is not "
                f"{PROTOCOL_VERSION}; update the bot and worker together",
            )
        # whatever the annotations say, a request from outside may hold anything
        image: object = request.image
        if not isinstance(image, (bytes, bytearray, memoryview)):
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, "the image must be sent as bytes")
        if not isinstance(request.top_k, int) or request.top_k < 1:
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, f"top_k must be ≥ 1, not {request.top_k!r}")
        labels: object = request.labels
        if isinstance(labels, str):
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, "labels must be a list of strings")
        try:
            problem = request_shape_problem(request)
        except TypeError:  # labels of a type without a length
            problem = "labels must be a list of strings"
        if problem is not None:
            return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, problem)
        if request.query is not None:
            try:  # the label rules' spelling (NFC, whitespace, no invisible characters): a query and a label match
                (query,) = normalise_labels([request.query], max_count=1, max_length=MAX_QUERY_LENGTH, emoji=False)
            except LabelError as e:
                why = "the query is empty" if e.code == "empty" else f"query: {e}"
                return ClassifyResult.failure(rid, ErrorCode.BAD_REQUEST, why)
            return (), query
        if not request.labels:  # embed only (request_shape_problem allows it only with embed)
            return (), None
        cfg = self.config.labels
        try:
            # labels arrive as names (the bot keeps a label's emoji, 犬=🐕, for its answers): "=" is plain text here,
            # as in a set stored before labels could carry emoji ("E=mc2")
            labels = normalise_labels(request.labels, max_count=cfg.max_count, max_length=cfg.max_length, emoji=False)
            return labels, None
        except (LabelError, TypeError) as e:
            return ClassifyResult.failure(rid, ErrorCode.BAD_LABELS, str(e))

    def _prepare(self, job: _Job) -> None:
        start = time.perf_counter()
        if not job.future.cancelled():  # a cancelled job skips the decode; the batcher drops it
            self._decode(job)
        job.decode_ms = (time.perf_counter() - start) * 1000
        # count it as decoded before it becomes visible, so the batcher never waits on itself
        with self._lock:
            self._decoding -= 1
        self._ready.put(job)

    def _decode(self, job: _Job) -> None:
        try:
            image = decode_image(bytes(job.request.image), self.limits, self.adapter.preprocessor.draft_size)
            job.prepared = self.adapter.preprocessor.prepare(image)
        except ImageError as e:
            job.error = (e.code, e.message)
        except Exception as e:  # never let one image take the worker down
            log.exception("preprocessing failed for request %s", job.request.id)
            job.error = (ErrorCode.CORRUPT, f"the image could not be processed ({type(e).__name__})")

    def _run(self) -> None:
        while True:
            batch: list[_Job] = []
            while self._unparked and len(batch) < self.max_batch:
                batch.append(self._unparked.popleft())
            first: _Job | _Idle | None = _IDLE
            if len(batch) < self.max_batch:
                try:  # with work of its own (labels to encode, jobs released), never sleep on the queue
                    first = self._ready.get(block=not (batch or self._label_work or self._queries))
                except queue.Empty:
                    pass
            image_started = time.perf_counter()  # idle waiting above is nobody's share
            stop = False
            try:
                if not isinstance(first, _Idle):  # i.e. first is not _IDLE
                    stop = self._collect(first, batch)
                if batch:
                    self._process(batch)
            except Exception:  # a bug here must not leave every later request hanging
                log.exception("batcher failed; answering the batch with an error")
                for job in batch or ([first] if isinstance(first, _Job) else []):
                    self._finish_error(job, ErrorCode.INTERNAL, "the worker hit an internal error")
            if stop:
                return
            if (self._label_work or self._queries) and self._text_turn(image_started):
                started = time.perf_counter()
                if self._queries:  # one text each: short, and someone is waiting for search results
                    self._query_step()
                else:
                    self._label_step()
                self._text_s += time.perf_counter() - started
            elif not (self._label_work or self._queries):
                self._text_s = self._image_s = 0.0  # shares are counted per stretch of label work

    def _text_turn(self, image_started: float) -> bool:
        """Whether the next text step may run now: always when no image is ready to run (images still
        decoding wait one step at most; spinning until they are ready would only take the GIL from
        the decoders), otherwise only while the text tower has had less than its share of the time
        since label work began."""
        self._image_s += time.perf_counter() - image_started
        images_ready = bool(self._unparked) or not self._ready.empty()
        return not images_ready or self._text_s <= _TEXT_SHARE / (1 - _TEXT_SHARE) * self._image_s

    def _collect(self, first: _Job | None, batch: list[_Job]) -> bool:
        """Gather ready jobs into `batch` up to max_batch, waiting only while more are
        being decoded. Returns True when the engine is stopping."""
        deadline = time.perf_counter() + self.max_wait
        job: _Job | None = first
        while True:
            if job is None:
                return True
            if job.future.cancelled():
                self._finish(job, None)
            elif job.error is not None:
                self._finish_error(job, *job.error)
            elif job.query is not None:
                self._queries.append(job)  # text work: between image batches (_query_step)
            else:
                batch.append(job)
                if len(batch) >= self.max_batch:
                    return False
            try:
                job = self._ready.get_nowait()
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.perf_counter()
            if self._decoding == 0 or remaining <= 0:
                return False
            try:
                job = self._ready.get(timeout=remaining)
            except queue.Empty:
                return False

    def _process(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        now = time.time()
        live: list[_Job] = []
        embeddings: dict[tuple[str, ...], torch.Tensor] = {}
        for job in batch:
            if job.future.cancelled():
                self._finish(job, None)
            elif job.request.deadline is not None and now > job.request.deadline:
                self._finish_error(job, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited")
            elif not job.labels:  # embed only: no label set to look up
                live.append(job)
            else:
                known = embeddings.get(job.labels)
                if known is None:
                    known = self.cache.lookup(job.labels)
                if known is None:
                    self._park(job)
                else:
                    embeddings[job.labels] = known
                    live.append(job)
        if live:
            self._execute(live, embeddings, started)

    def _execute(self, jobs: list[_Job], embeddings: dict[tuple[str, ...], torch.Tensor], started: float) -> None:
        try:
            self._run_batch(jobs, embeddings, started)
        except Exception as e:
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if len(jobs) > 1:
                # isolate the culprit: retry one by one
                log.warning("batch of %d failed (%s); retrying one by one", len(jobs), e)
                for job in jobs:
                    self._execute([job], embeddings, time.perf_counter())
                return
            log.exception("model failed on request %s", jobs[0].request.id)
            self._finish_error(jobs[0], ErrorCode.INTERNAL, f"the model failed on this image ({type(e).__name__})")

    # ---- label sets the cache does not know yet ---------------------------------------

    def _park(self, job: _Job) -> None:
        """Hold a decoded job until its label set is encoded (see _label_step)."""
        work = self._label_work.get(job.labels)
        if work is None:
            known = self.cache.known(job.labels)
            work = _LabelWork(job.labels, known, deque(l for l in dict.fromkeys(job.labels) if l not in known), [])
            self._label_work[job.labels] = work
        work.jobs.append(job)

    def _label_step(self) -> None:
        """Encode the next few labels of the oldest waiting set; release its jobs once it is whole."""
        work = next(iter(self._label_work.values()))
        chunk: list[str] = []
        while work.todo and len(chunk) < _TEXT_STEP_LABELS:
            chunk.append(work.todo.popleft())
        try:
            work.vectors.update(self.cache.known(tuple(chunk)))  # another set may have encoded some meanwhile
            work.vectors.update(self.cache.encode([l for l in chunk if l not in work.vectors]))
            self.stats.text_steps += 1
            if work.todo:
                return
            self.cache.store_set(work.labels, work.vectors)
        except Exception as e:  # a text tower that fails on these labels fails only their requests
            log.exception("encoding a label set of %d labels failed", len(work.labels))
            del self._label_work[work.labels]
            for job in work.jobs:
                self._finish_error(job, ErrorCode.INTERNAL, f"the model failed on these labels ({type(e).__name__})")
            return
        del self._label_work[work.labels]
        self._unparked.extend(work.jobs)

    # ---- search queries ---------------------------------------------------------------

    def _query_step(self) -> None:
        """Embed the next few waiting search queries (each by the labels' template ensemble)."""
        started = time.perf_counter()
        now = time.time()
        jobs: list[_Job] = []
        while self._queries and len(jobs) < _QUERY_STEP:
            job = self._queries.popleft()
            if job.future.cancelled():
                self._finish(job, None)
            elif job.request.deadline is not None and now > job.request.deadline:
                self._finish_error(job, ErrorCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited")
            else:
                jobs.append(job)
        if not jobs:
            return
        texts = [_query_of(job) for job in jobs]
        try:
            vectors: dict[str, torch.Tensor] = {}
            for text in texts:
                cached = self._query_cache.get_fresh(text)
                if cached is None:  # the words of a label already known: its vector, no text-tower work
                    cached = self.cache.known((text,)).get(text)
                if cached is not None:
                    vectors[text] = cached
            missing = list(dict.fromkeys(t for t in texts if t not in vectors))
            if missing:
                encoded = self.cache.ensemble(missing)
                vectors.update(zip(missing, encoded))
                self.stats.text_steps += 1
            rows = {text: _packed(vector) for text, vector in vectors.items()}
            for text, vector in vectors.items():
                self._query_cache.put(text, vector)
        except Exception as e:  # a text tower that fails on these queries fails only them
            log.exception("embedding %d search queries failed", len(jobs))
            for job in jobs:
                self._finish_error(job, ErrorCode.INTERNAL, f"the model failed on this query ({type(e).__name__})")
            return
        model_ms = (time.perf_counter() - started) * 1000
        self.stats.queries += len(jobs)
        for job, text in zip(jobs, texts):
            self._finish(
                job,
                ClassifyResult(
                    id=job.request.id,
                    timings=self._timings(job, started, model_ms, len(jobs)),
                    embedding=rows[text],
                    embedding_model=self.model_key,
                ),
            )

    # ---- image batches ----------------------------------------------------------------

    def _run_batch(self, jobs: list[_Job], embeddings: dict[tuple[str, ...], torch.Tensor], started: float) -> None:
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.labels].append(i)
        adapter = self.adapter
        inputs = adapter.preprocessor.collate([_prepared(j) for j in jobs], adapter.device, adapter.dtype)
        image_emb = adapter.encode_images(inputs)
        # L2-normalised float32 (Adapter.encode_images); to the host only when someone asked for it
        vectors = _host_rows(image_emb) if any(j.request.embed for j in jobs) else None
        scored: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for labels, idx in groups.items():
            if not labels:  # embed-only requests: nothing to score
                continue
            share, match = adapter.score(image_emb[idx], embeddings[labels], self.reference)
            share = share.cpu()
            match = match.cpu() if match is not None else None
            for row, i in enumerate(idx):
                scored[i] = (share[row], match[row] if match is not None else None)
        model_ms = (time.perf_counter() - started) * 1000
        self.stats.batches += 1
        self.stats.images += len(jobs)
        self.stats.batch_sizes.append(len(jobs))
        for i, job in enumerate(jobs):
            top: tuple[LabelScore, ...] = ()
            if job.labels:
                share, match = scored[i]
                k = min(job.request.top_k, len(job.labels))
                values, order = torch.topk(share, k)
                top = tuple(
                    self._label_score(job.labels[j], v, None if match is None else float(match[j]))
                    for v, j in zip(values.tolist(), order.tolist())
                )
            embedded = vectors is not None and job.request.embed
            self._finish(
                job,
                ClassifyResult(
                    id=job.request.id,
                    top=top,
                    timings=self._timings(job, started, model_ms, len(jobs)),
                    embedding=vectors[i].tobytes() if embedded and vectors is not None else None,
                    embedding_model=self.model_key if embedded else None,
                ),
            )

    def _label_score(self, label: str, share: float, match: float | None) -> LabelScore:
        fits = None if match is None else match >= self.match_threshold
        return LabelScore(label, float(share), match, fits)

    # ---- completion ---------------------------------------------------------------

    def _timings(self, job: _Job, started: float, model_ms: float = 0.0, batch_size: int = 0) -> Timings:
        now = time.perf_counter()
        return Timings(
            queue_ms=(started - job.submitted) * 1000,
            decode_ms=job.decode_ms,
            model_ms=model_ms,
            total_ms=(now - job.submitted) * 1000,
            batch_size=batch_size,
        )

    def _finish_error(self, job: _Job, code: ErrorCode, message: str) -> None:
        self._finish(
            job, ClassifyResult.failure(job.request.id, code, message, self._timings(job, time.perf_counter()))
        )

    def _finish(self, job: _Job, result: ClassifyResult | None) -> None:
        """Answer a job exactly once (result None: the caller cancelled it) and free its place."""
        with self._lock:
            if job.finished:
                return
            job.finished = True
            self._in_flight -= 1
            self._jobs.discard(job)
            if result is None:
                self.stats.cancelled += 1
        if result is None:
            return
        try:
            job.future.set_result(result)
        except InvalidStateError:  # cancelled by the caller meanwhile: nobody is waiting
            with self._lock:
                self.stats.cancelled += 1


def _host_rows(embeddings: torch.Tensor) -> np.ndarray:
    """N × D embeddings as little-endian float32 rows on the host (each row's bytes: pack_embedding)."""
    return np.ascontiguousarray(embeddings.detach().float().cpu().numpy(), dtype="<f4")


def _packed(vector: torch.Tensor) -> bytes:
    return bytes(_host_rows(vector.reshape(1, -1))[0].tobytes())


def _query_of(job: _Job) -> str:
    assert job.query is not None  # only query jobs reach _query_step
    return job.query


def _prepared(job: _Job) -> dict[str, Any]:
    assert job.prepared is not None  # only jobs decoded without an error reach a batch
    return job.prepared
