"""The bot's end of the Redis Streams transport (worker.transport: redis).

Requests go to one stream (`<prefix>:requests`) that every `python -m model_worker serve`
reads through one consumer group; answers come back on this bot process's own reply
stream (`<prefix>:replies:<bot id>`) and are matched to the waiting caller by request
id. The first answer for an id is passed on; a late or repeated one (a worker that was
taken over and then woke up) is dropped, so a user hears once.

Workers announce themselves with heartbeat keys that expire after three missed beats.
While none is alive the images wait in the stream for one (a worker restarting, a fleet
starting up), but only for `worker.request_timeout_s` after the last worker was seen:
after that, and with Redis unreachable, new images are answered "unavailable" at once.
With the shared stream past `worker.stream_max_len`, or Redis out of memory
(`maxmemory`), "busy". An image over `images.max_bytes` never reaches Redis, and once in
Redis its bytes are not kept here. A request whose caller stops waiting is deleted from
the stream, so a worker that has not read it yet never does.

The background loops (heartbeats, answers) are supervised: an unexpected error is logged
and the loop started again, so the bot never silently stops hearing its workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis
import redis.asyncio as aioredis

from bot.services import metrics
from bot.transport.base import Reservation, TransportBase, deadline_wait, timed_out
from wakeru.config import Config
from wakeru.config import redact_url as _safe_url
from wakeru.protocol import (
    PROTOCOL_VERSION,
    REQUESTS_GROUP,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    WorkerInfo,
    heartbeat_key,
    parse_result_fields,
    replies_key,
    request_fields,
    requests_key,
)

if TYPE_CHECKING:
    from redis.typing import StreamIdT

log = logging.getLogger("wakeru.transport")

_RETRY_MAX_S = 5.0
_READ_BLOCK_MS = 1000

# XREAD's reply as this client gets it (RESP2, responses not decoded): per stream a [name, entries]
# pair, each entry an (entry id, fields) pair. redis-py types it as the union of every protocol's shapes.
_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


@dataclass(eq=False)
class _Waiting:
    request: ClassifyRequest  # without its image once the image is in Redis
    future: asyncio.Future[ClassifyResult]
    place: Reservation
    entry_id: bytes | str | None = None  # the request's stream entry once added (bytes: responses are not decoded)


class RedisWorkerTransport(TransportBase[_Waiting]):
    """Model workers anywhere, reached through Redis Streams."""

    def __init__(self, config: Config, bot_id: str | None = None):
        super().__init__(config)
        cfg = config.worker
        self.bot_id = bot_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._requests = requests_key(cfg.redis_prefix)
        self._replies = replies_key(cfg.redis_prefix, self.bot_id)
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()  # set by close(): background pauses end at once
        self.workers: dict[str, WorkerInfo] = {}  # live workers by name, as their heartbeats describe them
        self.backlog = 0  # entries in the request stream (waiting or being worked on)
        self.duplicates = 0  # answers dropped because the request was already answered
        self._workers_seen = time.monotonic()  # when a worker was last alive (or this bot started)
        self._withdrawals: set[asyncio.Task[None]] = set()

    @property
    def _client(self) -> aioredis.Redis:
        """The connection start() made; nothing uses it before."""
        assert self._redis is not None, "the transport is not started"
        return self._redis

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state != "stopped":
            return
        self._set_state("starting")
        self._accepting = True
        self._closing = asyncio.Event()
        self._workers_seen = time.monotonic()
        self._redis = aioredis.Redis.from_url(
            self.config.worker.redis_url,
            socket_connect_timeout=5,
            socket_timeout=self.config.worker.redis_timeout_s,
            health_check_interval=10,
        )
        self._tasks = [
            self._supervise("the worker watcher", self._watch_workers),
            self._supervise("the answer reader", self._read_replies),
        ]
        log.info(
            "sending images through Redis at %s (stream %s, replies on %s)",
            _safe_url(self.config.worker.redis_url),
            self._requests,
            self._replies,
        )

    async def close(self, timeout: float = 15.0) -> None:
        if self.state == "stopped":
            return
        self._accepting = False
        self._set_state("stopped")
        self._closing.set()  # cuts every _sleep short
        # The loops see the state and end after their current call (a blocking XREAD ends within
        # a second). Cancelling one inside redis-py's XREAD can leave it waiting forever after a
        # Redis restart, so cancellation is only the fallback, and is not waited for long.
        _, left = await asyncio.wait(self._tasks, timeout=_READ_BLOCK_MS / 1000 + 2)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2)
        if self._withdrawals:
            await asyncio.wait(set(self._withdrawals), timeout=2)
        self._fail_all(ErrorCode.UNAVAILABLE, "the bot is shutting down")
        if self._redis is not None:
            try:
                await self._redis.delete(self._replies)  # late answers have no one to go to
            except redis.RedisError:
                pass
            await self._redis.aclose()

    @property
    def live_workers(self) -> int:
        return len(self.workers)

    def _set_state(self, state: str) -> None:
        if self.state == "stopped" and state != "starting":
            return  # news from a loop still finishing its last call after close()
        super()._set_state(state)

    async def _sleep(self, seconds: float) -> None:
        """A pause that close() cuts short."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a background loop until close(); a crash (a bug, a surprise from Redis) is logged
        and the loop started again after a backoff, instead of ending it silently."""

        async def run() -> None:
            delay = 0.2
            while self.state != "stopped":
                try:
                    await loop()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s crashed; starting it again in %.1f s", name, delay)
                    await self._sleep(delay)
                    delay = min(_RETRY_MAX_S, delay * 2)

        return asyncio.ensure_future(run())

    def _unavailable_because(self) -> str | None:
        # user-facing: never the queue's address (it is in the log)
        if self.state == "unreachable":
            return "temporarily unavailable: the queue cannot be reached"
        if self.state == "no_workers" and time.monotonic() - self._workers_seen > self.config.worker.request_timeout_s:
            return "temporarily unavailable: no model worker is running"
        if self.state in ("starting", "ready", "no_workers"):
            return None  # a worker that is (re)starting takes the waiting images from the stream
        return "the worker is stopped"

    def _room_for(self, request_id: str, nbytes: int) -> ClassifyResult | None:
        if self.backlog >= self.config.worker.stream_max_len:
            return ClassifyResult.failure(
                request_id,
                ErrorCode.QUEUE_FULL,
                f"the model workers are busy ({self.backlog} images waiting); try again",
            )
        return super()._room_for(request_id, nbytes)

    # ---- requests ----------------------------------------------------------------------

    async def classify(self, request: ClassifyRequest, *, reservation: Reservation | None = None) -> ClassifyResult:
        limit = self.config.images.max_bytes
        refused = None
        if len(request.image) > limit:  # never ship what every worker would refuse
            refused = ClassifyResult.failure(
                request.id, ErrorCode.TOO_LARGE, f"the image is {len(request.image):,} bytes; the limit is {limit:,}"
            )
        elif request.id in self._pending:
            refused = ClassifyResult.failure(request.id, ErrorCode.BAD_REQUEST, "duplicate request id")
        if refused is not None:
            if reservation is not None:
                reservation.release()
            return refused
        place = self._take_over(request, reservation)
        if isinstance(place, ClassifyResult):
            return place
        entry = _Waiting(request, asyncio.get_running_loop().create_future(), place)
        self._pending[request.id] = entry
        try:
            try:
                # a hard cap well above the refusal threshold: trimming must never drop waiting work
                # (ignored: redis-py's stubs type `fields` as an invariant Dict, refusing a dict[str, bytes | str])
                entry.entry_id = await self._client.xadd(
                    self._requests,
                    request_fields(request, self._replies),  # type: ignore[arg-type]
                    maxlen=2 * self.config.worker.stream_max_len + 1000,
                    approximate=True,
                )
            except redis.OutOfMemoryError as e:  # Redis at its maxmemory (noeviction): full, not gone
                log.warning("Redis is out of memory; answering busy: %s", e, extra={"request_id": request.id})
                return ClassifyResult.failure(
                    request.id, ErrorCode.QUEUE_FULL, "the queue is full; try again in a moment"
                )
            except redis.RedisError as e:
                log.warning("could not queue an image in Redis: %s", e, extra={"request_id": request.id})
                return ClassifyResult.failure(
                    request.id, ErrorCode.UNAVAILABLE, "temporarily unavailable: the queue cannot be reached"
                )
            # the image is Redis's now (failover happens there): this process keeps only the place
            entry.request = dataclasses.replace(request, image=b"")
            place.resize(0)
            self.backlog += 1
            return await asyncio.wait_for(asyncio.shield(entry.future), deadline_wait(request))
        except asyncio.TimeoutError:
            return timed_out(request)
        finally:
            place.release()
            self._pending.pop(request.id, None)
            if not entry.future.done() and entry.entry_id is not None:
                self._withdraw(entry.entry_id)

    def _withdraw(self, entry_id: bytes | str) -> None:
        """The caller gave up: delete the request so a worker that has not read it never does."""

        async def withdraw() -> None:
            try:
                await self._client.xdel(self._requests, entry_id)
            except redis.RedisError:
                pass  # the worker answers it anyway; the answer is dropped

        task = asyncio.ensure_future(withdraw())
        self._withdrawals.add(task)  # referenced until done, so it is neither collected nor forgotten at close
        task.add_done_callback(self._withdrawals.discard)

    # ---- answers -----------------------------------------------------------------------

    async def _read_replies(self) -> None:
        last: StreamIdT = "0-0"  # the reply stream is this process's own and new
        delay = 0.2
        while self.state != "stopped":
            try:
                streams = cast(
                    "_XReadReply | None",
                    await self._client.xread({self._replies: last}, count=256, block=_READ_BLOCK_MS),
                )
                delay = 0.2
                if self.state == "unreachable":  # Redis answers again: no need to wait for the next beat
                    self._set_state("ready" if self.workers else "no_workers")
            except asyncio.CancelledError:
                raise
            except redis.RedisError as e:
                log.warning("cannot read answers from Redis (%s); retrying in %.1f s", e, delay)
                await self._sleep(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
                continue
            done: list[StreamIdT] = []
            for _stream, entries in streams or ():
                for entry_id, fields in entries:
                    last = entry_id
                    done.append(entry_id)
                    self._deliver(fields)
            if done:
                try:
                    await self._client.xdel(self._replies, *done)
                except redis.RedisError:
                    pass  # the stream is trimmed and expires anyway

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        try:
            result = parse_result_fields(fields)
        except Exception:
            log.exception("unreadable answer on %s; dropped", self._replies)
            return
        entry = self._pending.get(result.id)
        if entry is None or entry.future.done():
            self.duplicates += 1
            metrics.DUPLICATE_RESULTS.inc()
            log.info("dropped an answer for a request already answered or given up", extra={"request_id": result.id})
            return
        entry.future.set_result(result)

    # ---- workers -----------------------------------------------------------------------

    async def _watch_workers(self) -> None:
        """Every heartbeat: which workers are alive, and how long the shared stream is."""
        cfg = self.config.worker
        pattern = heartbeat_key(cfg.redis_prefix, "*")
        group_ready = False
        while self.state != "stopped":
            try:
                if not group_ready:  # a worker may not exist yet; its group must, for the first XADD
                    await _ensure_group(self._client, self._requests)
                    group_ready = True
                keys: list[bytes] = [k async for k in self._client.scan_iter(match=pattern, count=1000)]
                values = await self._client.mget(keys) if keys else []
                self.backlog = await self._client.xlen(self._requests)
                await self._client.expire(self._replies, 3600)  # a dead bot's reply stream goes away
                self._update_workers(_parse_heartbeats(keys, values))
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError, ValueError) as e:
                if self.state != "unreachable":  # said once, when it happens
                    log.error(
                        'cannot reach Redis at %s: %s; images are answered "unavailable" until it is back',
                        _safe_url(cfg.redis_url),
                        e,
                    )
                group_ready = False
                self._set_state("unreachable")
            await self._sleep(cfg.heartbeat_s)

    def _update_workers(self, workers: dict[str, WorkerInfo]) -> None:
        gone = set(self.workers) - set(workers)
        new = set(workers) - set(self.workers)
        for name in sorted(gone):
            log.warning("model worker %s is gone (no heartbeat for %g s)", name, 3 * self.config.worker.heartbeat_s)
        for name in sorted(new):
            log.info("model worker %s is alive: %s", name, workers[name])
        models = {w.model for w in workers.values()}
        if new and len(models) > 1:
            log.warning(
                "the live workers run different models (%s): answers will differ between them",
                ", ".join(sorted(map(str, models))),
            )
        self.workers = workers
        metrics.LIVE_WORKERS.set(len(workers))
        if workers:
            self._workers_seen = time.monotonic()
            self.info = workers[sorted(workers)[0]]
            if self.state != "ready":
                log.info("%d model worker(s) alive; classifying", len(workers))
            self._set_state("ready")
            self.ready.set()
        else:
            if self.state == "ready":
                log.error(
                    "no model worker is alive: images wait in the queue for one for up to %g s, then are "
                    'answered "unavailable" until one starts (python -m model_worker serve)',
                    self.config.worker.request_timeout_s,
                )
            self._set_state("no_workers")


def _parse_heartbeats(keys: Sequence[bytes | str], values: Sequence[bytes | str | None]) -> dict[str, WorkerInfo]:
    """Live workers by name from their heartbeat values; a value that is not a worker's JSON
    object (a stray key, another program's data, a worker of another protocol version) is
    skipped with a warning, never fatal to the watcher."""
    workers = {}
    for key, value in zip(keys, values, strict=True):  # MGET answers one value per key
        if not value:
            continue  # expired between SCAN and MGET
        try:
            info = WorkerInfo.from_dict(json.loads(value))
        except ValueError:  # json's errors and ProtocolError
            log.warning("ignoring heartbeat key %r: its value is not a worker's JSON object", key)
            continue
        if info.version != PROTOCOL_VERSION:
            log.warning(
                "ignoring model worker %s: it speaks protocol v%d, this bot v%d (upgrade one of them)",
                info.name or key,
                info.version,
                PROTOCOL_VERSION,
            )
            continue
        workers[info.name or (key.decode(errors="replace") if isinstance(key, bytes) else str(key))] = info
    return workers


async def _ensure_group(client: aioredis.Redis, stream: str) -> None:
    try:
        await client.xgroup_create(stream, REQUESTS_GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
