"""The worker's end of the Redis Streams transport: `python -m model_worker serve`.

Any number of workers, on any machines, read one request stream through one consumer
group, so each request goes to one worker. A worker reads only as many entries as its
engine has room for (its dynamic batcher forms the batches), answers each on the
requesting bot's own reply stream, and acknowledges and deletes the request in the same
MULTI/EXEC, so the stream holds only work that is waiting or in progress.

Failover: entries a worker has read stay in the group's pending list until it answers.
A live worker renews its claim on them every few seconds (XCLAIM … JUSTID resets their
idle time), so only a dead or hung worker's entries go idle; after `worker.claim_idle_s`
another worker takes them over with XAUTOCLAIM and answers them. The delivery counter
tells a request that has already been in two workers that died (a poison image) from an
innocent one: it is answered CRASHED instead of killing a third worker. A result may
reach the reply stream twice (a hung worker wakes up after the takeover); the bot passes
on the first and drops the rest, so a user gets at most one answer.

Workers announce themselves with a heartbeat key that expires after three missed beats;
the bot counts them to answer "unavailable" when none is alive.

No Redis error stops a worker: reading retries with a backoff, and an answer that cannot be
written (Redis unreachable, paused past `worker.redis_timeout_s`, or out of memory) is
retried until its request's deadline has passed for the bot too. Then the worker gives it
up: it releases the request if it can, and stops renewing its claim either way, so nothing
stays held by a worker that cannot deliver it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis

from model_worker.serving.startup import worker_info
from wakeru.config import Config
from wakeru.config import redact_url as _safe_url
from wakeru.protocol import (
    REQUESTS_GROUP,
    ClassifyResult,
    ErrorCode,
    WorkerInfo,
    heartbeat_key,
    parse_request_fields,
    request_reply_of,
    requests_key,
    result_fields,
)

if TYPE_CHECKING:
    from redis.typing import StreamIdT

    from model_worker.devtools.faults import Faults

log = logging.getLogger("wakeru.worker")

# A reply stream keeps at most about this many answers (its bot reads and deletes them as
# they come) and disappears this long after its last answer (its bot is gone).
REPLY_MAX_LEN = 10_000
REPLY_TTL_S = 3600
# An entry delivered this many times has been in (at least) two workers that went silent.
_POISON_DELIVERIES = 3
_RETRY_MAX_S = 5.0
# The bot waits this long past a request's deadline (bot/transport.py's grace) before it answers
# for the worker: after that, a late answer reaches no one and is given up.
_BOT_GRACE_S = 2.0
# How long an answer without a deadline (a malformed entry's) is retried before it is given up.
_UNDATED_GIVE_UP_S = 60.0

# XREADGROUP's reply as this client gets it (RESP2, responses not decoded): per stream a [name, entries]
# pair, each entry an (entry id, fields) pair. redis-py types it as the union of every protocol's shapes.
_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
# What the sender thread writes: (request entry, reply stream, answer); no answer (and no stream)
# for an entry that is only released.
_Answer = tuple[bytes, str | None, ClassifyResult | None]


@dataclass(eq=False)
class _Held:
    entry_id: bytes
    request_id: str
    reply_to: str
    deadline: float | None = None  # the request's, wall clock


def worker_name() -> str:
    """host-pid-random: unique per process, readable in `XINFO CONSUMERS` and the logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def connect(url: str, timeout_s: float = 15.0) -> redis.Redis:
    # socket_timeout (worker.redis_timeout_s) above the longest XREADGROUP block, so a silent Redis is noticed
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=timeout_s, health_check_interval=10)


def ensure_group(client, prefix: str) -> None:
    """Create the request stream and its consumer group if missing (a bot or a worker may come first)."""
    try:
        client.xgroup_create(requests_key(prefix), REQUESTS_GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


class RedisWorker:
    """Serves the request stream with one engine until `stop()`."""

    def __init__(
        self,
        engine,
        config: Config,
        client: redis.Redis | None = None,
        name: str | None = None,
        info: WorkerInfo | None = None,
        faults: Faults | None = None,
    ):
        self.engine = engine
        self.config = config
        self.name = name or worker_name()
        self.prefix = config.worker.redis_prefix
        self.stream = requests_key(self.prefix)
        self.redis = client or connect(config.worker.redis_url, config.worker.redis_timeout_s)
        # what the heartbeat says about this worker (the bot reads it with WorkerInfo.from_dict)
        self.info = dataclasses.replace(info, name=self.name, host=socket.gethostname()) if info else None
        self.faults = faults
        self.served = 0
        self.taken_over = 0
        self.given_up = 0  # answers that could not be written to Redis before their deadline
        self._held: dict[bytes, _Held] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._outbox: queue.SimpleQueue[_Answer | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._hurry = threading.Event()  # stop without waiting for what is held (a second Ctrl-C)
        self._failing: dict[bytes, float] = {}  # answers Redis refused, since when (the sender thread's)
        self._claim_cursor = "0-0"

    # ---- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; what is held gets the grace period. Not for signal handlers (it takes a
        lock the interrupted thread may hold): see install_signal_handlers."""
        self._stopping.set()
        with self._room:
            self._room.notify_all()

    @property
    def hurried(self) -> bool:
        return self._hurry.is_set()

    def hurry(self) -> None:
        """Stop now: what is held is left for another worker to take over."""
        self._hurry.set()
        self.stop()

    def run(self, grace_s: float = 30.0) -> None:
        """Blocking: serve until stop(), then finish what is held (up to grace_s) and leave."""
        self._wait_for_redis()
        sender = threading.Thread(target=self._send_results, name="wakeru-results", daemon=True)
        beat = threading.Thread(target=self._heartbeat, name="wakeru-heartbeat", daemon=True)
        sender.start()
        beat.start()
        log.info("worker %s serving %s on %s", self.name, self.stream, _safe_url(self.config.worker.redis_url))
        try:
            self._serve()
        finally:
            deadline = time.monotonic() + grace_s
            with self._room:
                while self._held and time.monotonic() < deadline and not self._hurry.is_set():
                    self._room.wait(0.1)
                left = len(self._held)
            if left:
                log.warning(
                    "stopping with %d request(s) unanswered; another worker takes them over after %g s",
                    left,
                    self.config.worker.claim_idle_s,
                )
            self._outbox.put(None)
            sender.join(1 if self._hurry.is_set() else 10)
            try:
                self.redis.delete(heartbeat_key(self.prefix, self.name))  # gone now, not in 3 beats
            except redis.RedisError:
                pass
            log.info("worker %s stopped after answering %d request(s)", self.name, self.served)

    def _wait_for_redis(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                ensure_group(self.redis, self.prefix)
                return
            except redis.RedisError as e:  # unreachable, paused, out of memory: wait, never die
                log.warning(
                    "cannot reach Redis at %s (%s); retrying in %.1f s",
                    _safe_url(self.config.worker.redis_url),
                    e,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(_RETRY_MAX_S, delay * 2)

    # ---- reading -----------------------------------------------------------------------

    def _room_left(self) -> int:
        """How many more requests the engine should hold: enough to fill the next batches,
        not so many that they wait here while another worker sits idle."""
        cfg = self.config.worker
        return min(cfg.queue_size, 2 * cfg.max_batch) - len(self._held)

    def _serve(self) -> None:
        cfg = self.config.worker
        claim_every = max(0.5, cfg.claim_idle_s / 2)
        next_claim = time.monotonic()
        delay = 0.2
        while not self._stopping.is_set():
            with self._room:
                while self._room_left() <= 0 and not self._stopping.is_set():
                    self._room.wait(0.5)
                room = self._room_left()
            if self._stopping.is_set():
                break
            try:
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + claim_every
                    room -= self._take_over(room)
                if room <= 0:
                    continue
                reply = cast(
                    "_XReadReply | None",
                    self.redis.xreadgroup(REQUESTS_GROUP, self.name, {self.stream: ">"}, count=room, block=1000),
                )
                delay = 0.2
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):  # Redis restarted empty, or someone deleted the stream
                    self._retry(lambda: ensure_group(self.redis, self.prefix))
                    continue
                log.warning("Redis refused to hand out requests (%s); retrying in %.1f s", e, delay)
                self._stopping.wait(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
                continue
            except redis.RedisError as e:  # a lost connection, a timeout (a paused Redis)
                log.warning("lost Redis (%s); retrying in %.1f s", e, delay)
                self._stopping.wait(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._accept(entry_id, fields)

    @staticmethod
    def _retry(call) -> None:
        """One best-effort call whose failure the next loop round retries anyway."""
        try:
            call()
        except redis.RedisError as e:
            log.warning("Redis call failed (%s); trying again shortly", e)

    def _take_over(self, room: int) -> int:
        """XAUTOCLAIM entries left idle by a dead or hung worker; returns how many were taken."""
        idle_ms = int(self.config.worker.claim_idle_s * 1000)
        cursor, claimed, _deleted = self.redis.xautoclaim(
            self.stream, REQUESTS_GROUP, self.name, idle_ms, start_id=self._claim_cursor, count=max(1, room)
        )[:3]
        self._claim_cursor = cursor
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields]  # None: deleted meanwhile
        if not claimed:
            return 0
        deliveries = {
            p["message_id"]: cast(int, p["times_delivered"])  # XPENDING's count: an integer reply
            for p in self.redis.xpending_range(
                self.stream,
                REQUESTS_GROUP,
                min=claimed[0][0],
                max=claimed[-1][0],
                count=len(claimed) + 100,
                consumername=self.name,
            )
        }
        log.warning("took over %d request(s) left by a worker that went silent", len(claimed))
        self.taken_over += len(claimed)
        for entry_id, fields in claimed:
            self._accept(entry_id, fields, deliveries.get(entry_id, 2))
        return len(claimed)

    def _accept(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int = 1) -> None:
        try:
            request, reply_to = parse_request_fields(fields)
        except Exception:
            ids = request_reply_of(fields)
            if ids is None:
                log.warning("dropping a malformed stream entry %s without a request id or reply stream", entry_id)
                self._outbox.put((entry_id, None, None))
                return
            self._outbox.put(
                (entry_id, ids[1], ClassifyResult.failure(ids[0], ErrorCode.BAD_REQUEST, "malformed request"))
            )
            return
        if deliveries >= _POISON_DELIVERIES:
            log.warning(
                "request was held by %d workers that went silent; answering it as crashed",
                deliveries - 1,
                extra={"request_id": request.id},
            )
            self._outbox.put(
                (
                    entry_id,
                    reply_to,
                    ClassifyResult.failure(
                        request.id,
                        ErrorCode.CRASHED,
                        "the model workers holding this image died twice; it was not tried again",
                    ),
                )
            )
            return
        held = _Held(entry_id, request.id, reply_to, request.deadline)
        with self._lock:
            self._held[entry_id] = held
        if self.faults is not None:
            self.faults.check_request(request.labels)
        future = self.engine.submit(request)
        future.add_done_callback(lambda f, held=held: self._done(held, f))

    def _done(self, held: _Held, future) -> None:
        result = future.result()  # the engine's futures always resolve to a result
        self._outbox.put((held.entry_id, held.reply_to, result))

    # ---- answering ---------------------------------------------------------------------

    def _send_results(self) -> None:
        """One thread answers: XADD the result to its bot's stream, XACK and XDEL the request,
        all in one MULTI/EXEC, so an answer is never sent without its request leaving the group
        (and vice versa). Batches whatever is waiting. While Redis fails (any error: gone, paused,
        out of memory) it retries with a backoff, adding new answers to the batch, and gives up
        the answers whose bot has stopped waiting. Nothing ends this thread but stop."""
        batch: list[_Answer] = []
        stopping, delay, stop_trying_at = False, 0.2, float("inf")  # stop_trying_at: set once stopping
        while True:
            if not batch:
                if stopping:
                    return
                first = self._outbox.get()
                if first is None:
                    return
                batch.append(first)
            while len(batch) < 256:
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    stop_trying_at = time.monotonic() + (0 if self._hurry.is_set() else _RETRY_MAX_S)
                    break
                batch.append(item)
            try:
                self._write(batch)
            except Exception as e:
                if not isinstance(e, redis.RedisError):
                    log.exception("writing %d answer(s) failed", len(batch))
                give_up_all = stopping and time.monotonic() >= stop_trying_at
                batch = self._give_up(batch, e, everything=give_up_all)
                if batch:
                    log.warning("cannot deliver %d answer(s) (%s); retrying in %.1f s", len(batch), e, delay)
                    time.sleep(delay)
                    delay = min(_RETRY_MAX_S, delay * 2)
                continue
            self._settle(batch)
            batch, delay = [], 0.2

    def _write(self, batch: list[_Answer]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, reply_to, result in batch:
                if result is not None:
                    assert reply_to is not None  # an answer always comes with its bot's stream
                    fields = result_fields(result)
                    # ignored: redis-py's stubs type `fields` as an invariant Dict, refusing a dict[str, str]
                    pipe.xadd(reply_to, fields, maxlen=REPLY_MAX_LEN, approximate=True)  # type: ignore[arg-type]
                    pipe.expire(reply_to, REPLY_TTL_S)
                pipe.xack(self.stream, REQUESTS_GROUP, entry_id)
                pipe.xdel(self.stream, entry_id)
            pipe.execute()

    def _settle(self, batch: list[_Answer]) -> None:
        """Delivered: the requests leave this worker's books."""
        with self._room:
            for entry_id, _reply_to, result in batch:
                self._failing.pop(entry_id, None)
                if self._held.pop(entry_id, None) is not None:
                    self.served += 1
                    if result is not None and result.error is not None:  # not result.ok
                        log.info(
                            "answered with %s: %s",
                            result.error.value,
                            result.message,
                            extra={"request_id": result.id, "outcome": result.error.value},
                        )
            self._room.notify_all()

    def _give_up(self, batch: list[_Answer], error: Exception, *, everything: bool = False) -> list[_Answer]:
        """Drop from `batch` the answers no bot waits for any more (deadline + the bot's grace
        passed, or all of them when stopping): release their requests if Redis lets us (XACK and
        XDEL free memory, so they work even when Redis is out of it), and stop renewing the
        claim on them either way. Returns the answers still worth retrying."""
        now = time.time()
        keep: list[_Answer] = []
        drop: list[_Answer] = []
        with self._lock:
            for item in batch:
                held = self._held.get(item[0])
                failing_since = self._failing.setdefault(item[0], now)
                if held is not None and held.deadline is not None:
                    limit = held.deadline + _BOT_GRACE_S
                else:  # no deadline (a malformed entry's answer): still give up some day
                    limit = failing_since + _UNDATED_GIVE_UP_S
                (drop if everything or now >= limit else keep).append(item)
        if not drop:
            return keep
        log.error(
            "giving up %d answer(s) that could not be written to Redis in time (%s); their bots have "
            "stopped waiting for them",
            len(drop),
            error,
        )
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for entry_id, _reply_to, _result in drop:
                    pipe.xack(self.stream, REQUESTS_GROUP, entry_id)
                    pipe.xdel(self.stream, entry_id)
                pipe.execute()
        except redis.RedisError as e:  # still unreachable: another worker's takeover answers them late
            log.warning("could not release them either (%s); they expire with their claim", e)
        with self._room:
            for entry_id, _reply_to, _result in drop:
                self._failing.pop(entry_id, None)
                if self._held.pop(entry_id, None) is not None:
                    self.given_up += 1
            self._room.notify_all()
        return keep

    # ---- heartbeat ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Announce this worker, and renew the claim on what it holds so no other worker takes
        it over while this one is alive and working."""
        cfg = self.config.worker
        every = min(cfg.heartbeat_s, cfg.claim_idle_s / 3)
        key = heartbeat_key(self.prefix, self.name)
        while not self._stopping.is_set():
            with self._lock:
                held: list[StreamIdT] = list(self._held)
            info = {
                **(self.info.to_dict() if self.info else {"name": self.name}),
                "in_flight": len(held),
                "served": self.served,
                "at": time.time(),
            }
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(key, json.dumps(info), px=int(cfg.heartbeat_s * 3000))
                    if held:
                        pipe.xclaim(self.stream, REQUESTS_GROUP, self.name, 0, held, justid=True)
                    pipe.execute()
            except redis.RedisError as e:
                log.debug("heartbeat failed: %s", e)
            except Exception:
                log.exception("heartbeat failed")
            self._stopping.wait(every)


def install_signal_handlers(worker: RedisWorker, signals=None) -> None:
    """SIGTERM/SIGINT stop the worker gracefully; a second one stops it at once.

    A handler runs in the main thread between two bytecodes, possibly while that thread holds
    the worker's lock: so it only writes a byte to a pipe (no lock, no allocation that can
    block), and a thread of its own does the stopping."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def on_signal(signum, frame) -> None:
        try:
            os.write(write_end, bytes([signum & 0xFF]))
        except OSError:  # the pipe is full: stops are on their way already
            pass

    def relay() -> None:
        count = 0
        while os.read(read_end, 1):
            count += 1
            if count == 1:
                log.info(
                    "stop requested: finishing the requests held (up to service.shutdown_grace_s); "
                    "signal again to stop at once"
                )
                worker.stop()
            else:
                log.warning("second stop signal: stopping now; another worker takes over what is held")
                worker.hurry()

    threading.Thread(target=relay, name="wakeru-signals", daemon=True).start()
    for sig in signals or (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def serve_forever(config: Config, engine, faults: Faults | None) -> int:
    """`python -m model_worker serve`: serve until SIGTERM or Ctrl-C."""
    worker = RedisWorker(engine, config, faults=faults, info=worker_info(config, engine))
    install_signal_handlers(worker)
    try:
        worker.run(grace_s=config.service.shutdown_grace_s)
    finally:  # hurried: do not wait for a forward pass in progress either
        engine.close(timeout=1 if worker.hurried else 10)
    return 0
