"""The Redis Streams transport against a real redis-server and `python -m model_worker serve`
processes: answers, failover by XAUTOCLAIM, at-most-once delivery, heartbeats, limits and hostile
stream entries. The first test runs real workers with the tiny trained model (marked slow); the
failover and hostile-entry tests run the same command line and Redis consumer around the
torch-free stand-in engine (tests/support/stub_worker.py), which starts in a fraction of the time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import signal
import time
import uuid

import pytest
import redis

from bot.transport.redis_streams import RedisWorkerTransport
from tests.conftest import make_config
from tests.support import shapes
from tests.support.redis_server import RedisServer, WorkerProcess, redis_server, redis_url, wait_for_workers  # noqa: F401
from wakeru.protocol import (
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
    result_fields,
    unpack_embedding,
)

pytestmark = pytest.mark.slow  # a real redis-server and worker processes

PREFIX = "wakeru"
STREAM = requests_key(PREFIX)


def _request(image: bytes, labels=shapes.CLASSES, deadline_s: float = 60) -> ClassifyRequest:
    return ClassifyRequest(id=uuid.uuid4().hex, image=image, labels=tuple(labels), deadline=time.time() + deadline_s)


def _shape(label: str, seed: int = 0) -> bytes:
    return shapes.encode(shapes.draw(label, (160, 120), random.Random(seed)), "PNG")


def _config(model, url: str, **worker):
    return make_config(
        model, worker={"transport": "redis", "redis_url": url, "heartbeat_s": 0.2, "claim_idle_s": 2.0, **worker}
    )


def _fake_heartbeat(client, name: str = "fake", ttl_ms: int = 60_000, **info) -> None:
    """A worker announcement without a worker: the bot's side alone can then be driven by hand."""
    announced = WorkerInfo(
        model="fake",
        family="siglip",
        device="cpu",
        dtype="float32",
        input_size=224,
        embedding_size=64,
        pid=1,
        name=name,
    )
    client.set(heartbeat_key(PREFIX, name), json.dumps({**announced.to_dict(), **info}), px=ttl_ms)


async def _until(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _held_by(client, consumer: str) -> int:
    for c in client.xinfo_consumers(STREAM, REQUESTS_GROUP):
        if c["name"].decode() == consumer:
            return c["pending"]
    return 0


def _consumer_of(worker: WorkerProcess) -> str:
    for c in worker_client(worker).xinfo_consumers(STREAM, REQUESTS_GROUP):
        if f"-{worker.pid}-" in c["name"].decode():
            return c["name"].decode()
    return ""  # not read anything yet


async def _held_by_one_worker(transport, client, worker: WorkerProcess, labels: list[str]) -> list[asyncio.Future]:
    """Send one image per label once `worker` is the only one alive, and wait until it holds them all."""
    wait_for_workers(client, PREFIX, 1, processes=(worker,))
    await asyncio.wait_for(transport.ready.wait(), 30)
    tasks = [asyncio.ensure_future(transport.classify(_request(_shape(lab, i % 6)))) for i, lab in enumerate(labels)]
    await _until(lambda: _held_by(client, _consumer_of(worker)) == len(labels), what="one worker to hold them all")
    return tasks


def worker_client(worker: WorkerProcess):
    return redis.Redis.from_url(worker.env["WAKERU_WORKER__REDIS_URL"])


# ---------------------------------------------------------------- real workers


async def test_two_workers_answer_everything_and_the_stream_is_left_empty(trained_model, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(trained_model, redis_url))
    workers = []
    await transport.start()
    try:
        await _until(lambda: transport.state == "no_workers", what="the bot to see no workers")
        # posted while the workers start: it waits in the stream and the first worker up takes it
        early = asyncio.ensure_future(transport.classify(_request(_shape("赤い丸"))))
        await _until(lambda: client.xlen(STREAM) == 1, what="the early image in the stream")
        workers = [WorkerProcess(trained_model, redis_url, tmp_path, name=f"w{i}").start() for i in range(2)]
        wait_for_workers(client, PREFIX, 2, processes=tuple(workers))
        await asyncio.wait_for(transport.ready.wait(), 30)
        await _until(lambda: len(transport.workers) == 2, what="both heartbeats")
        assert transport.info.input_size and transport.info.model == str(trained_model)
        first = await asyncio.wait_for(early, 30)
        assert first.ok and first.top[0].label == "赤い丸", first
        labels = list(shapes.CLASSES) * 4
        results = await asyncio.gather(
            *(transport.classify(_request(_shape(lab, i % 6))) for i, lab in enumerate(labels))
        )
        assert [r.top[0].label if r.ok else r.error for r in results] == labels
        bad = await transport.classify(_request(b"GIF89a" + b"\0" * 30))
        assert bad.error is ErrorCode.CORRUPT

        def served() -> int:  # heartbeats count what each worker answered
            return sum(
                json.loads(client.get(k) or "{}").get("served", 0) for k in client.scan_iter(match=f"{PREFIX}:worker:*")
            )

        await _until(lambda: served() == len(labels) + 2, timeout=5, what="the heartbeats to count the answers")
        # answered requests are acknowledged and deleted, answers read are deleted: nothing piles up
        await _until(lambda: client.xlen(STREAM) == 0, what="the request stream to empty")
        assert client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
        await _until(lambda: client.xlen(replies_key(PREFIX, transport.bot_id)) == 0, what="replies to be deleted")
        assert transport.duplicates == 0
        # a worker that stops cleanly removes its heartbeat at once: the bot does not wait for it to expire
        assert workers[0].stop() == 0
        await _until(lambda: len(transport.workers) == 1, timeout=5, what="the stopped worker to be gone")
        assert workers[1].stop() == 0
        await _until(lambda: transport.state == "no_workers", timeout=5, what="no workers")
        assert "stopped after answering" in workers[0].log()
    finally:
        for w in workers:
            w.stop()
        await transport.close()
    assert not client.exists(replies_key(PREFIX, transport.bot_id))  # closing removes the reply stream


async def test_a_killed_workers_pending_requests_are_answered_by_another(stub_model, redis_url, tmp_path):
    """Failover: worker A reads a batch and is SIGKILLed mid-batch; after claim_idle_s worker B
    takes A's pending entries over (XAUTOCLAIM) and answers all of them, once each."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(stub_model, redis_url))
    slow = WorkerProcess(
        stub_model, redis_url, tmp_path, name="slow", worker="stub", WAKERU_FAULTS="batch_delay_ms=120000"
    ).start()
    other = None
    await transport.start()
    try:
        labels = list(shapes.CLASSES) * 2
        tasks = await _held_by_one_worker(transport, client, slow, labels)
        other = WorkerProcess(stub_model, redis_url, tmp_path, name="other", worker="stub").start()
        wait_for_workers(client, PREFIX, 2, processes=(other,))
        killed_at = time.monotonic()
        slow.kill()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        took = time.monotonic() - killed_at
        assert [r.top[0].label if r.ok else r.error for r in results] == labels
        # idle time counts from A's last claim renewal, up to one heartbeat (0.2 s) before the kill:
        # not before claim_idle_s minus that, and not much later
        assert 2.0 - 0.2 <= took < 30, took
        assert "took over" in other.log()
        assert client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
        assert transport.duplicates == 0
        await _until(lambda: len(transport.workers) == 1, what="the killed worker's heartbeat to expire")
    finally:
        slow.stop()
        if other is not None:
            other.stop()
        await transport.close()


async def test_a_hung_worker_that_wakes_up_is_not_answered_twice(stub_model, redis_url, tmp_path):
    """Worker A is frozen (SIGSTOP) holding requests: B takes them over and answers. When A
    wakes up it answers them too; the bot passes on only the first answer of each."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(stub_model, redis_url))
    frozen = WorkerProcess(
        stub_model, redis_url, tmp_path, name="frozen", worker="stub", WAKERU_FAULTS="batch_delay_ms=4000"
    ).start()
    other = None
    await transport.start()
    try:
        labels = list(shapes.CLASSES)
        tasks = await _held_by_one_worker(transport, client, frozen, labels)
        os.kill(frozen.pid, signal.SIGSTOP)
        other = WorkerProcess(stub_model, redis_url, tmp_path, name="other2", worker="stub").start()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        assert [r.top[0].label for r in results] == labels
        os.kill(frozen.pid, signal.SIGCONT)  # finishes its slow batch and answers again
        await _until(lambda: transport.duplicates == len(labels), timeout=30, what="A's late answers")
        assert client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
    finally:
        try:
            os.kill(frozen.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        frozen.stop()
        if other is not None:
            other.stop()
        await transport.close()


async def test_the_worker_answers_hostile_entries_and_refuses_a_poison_image_a_third_time(
    stub_model, redis_url, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, REQUESTS_GROUP, id="0", mkstream=True)
    reply = replies_key(PREFIX, "test")
    # an entry already delivered to two workers that went silent (delivery count 2 before this worker)
    poison = _request(_shape("赤い丸"))
    poison_id = client.xadd(STREAM, request_fields(poison, reply))
    client.xreadgroup(REQUESTS_GROUP, "ghost-1", {STREAM: ">"}, count=1)
    client.xclaim(STREAM, REQUESTS_GROUP, "ghost-2", 0, [poison_id])
    # garbage: with an id and a reply stream (answered), and without (dropped)
    client.xadd(STREAM, {"id": "junk-1", "reply": reply, "image": b"\xff" * 10, "v": "x"})
    client.xadd(STREAM, {"nonsense": "yes"})
    client.xadd(STREAM, {**request_fields(_request(_shape("青い丸")), reply), "v": "99", "id": "old-bot"})
    good = _request(_shape("緑の丸"))
    client.xadd(STREAM, request_fields(good, reply))
    worker = WorkerProcess(stub_model, redis_url, tmp_path, worker="stub", WAKERU_WORKER__CLAIM_IDLE_S="0.5").start()
    try:
        deadline = time.monotonic() + 120
        answers: dict[str, ClassifyResult] = {}
        while len(answers) < 4 and time.monotonic() < deadline:
            for _, entries in client.xread({reply: "0-0"}, count=100, block=500) or ():
                for _, fields in entries:
                    r = parse_result_fields(fields)
                    answers[r.id] = r
            assert worker.process.poll() is None, worker.log()
        assert answers[poison.id].error is ErrorCode.CRASHED
        assert answers["junk-1"].error is ErrorCode.BAD_REQUEST
        assert answers["old-bot"].error is ErrorCode.BAD_REQUEST and "version" in answers["old-bot"].message
        assert answers[good.id].ok and answers[good.id].top[0].label == "緑の丸"
        await asyncio.sleep(0.5)
        assert client.xlen(STREAM) == 0 and client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
        assert "malformed stream entry" in worker.log()
    finally:
        assert worker.stop() == 0


async def test_embeddings_and_queries_travel_through_redis(trained_model, redis_url, tmp_path):
    """Protocol 4 through the stream: an embedding with a classification and a query (no image:
    a place of 0 bytes), answered by a real worker; the embedding rides base64 in the reply."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config(trained_model, redis_url))
    worker = WorkerProcess(trained_model, redis_url, tmp_path).start()
    await transport.start()
    try:
        wait_for_workers(client, PREFIX, 1, processes=(worker,))
        await asyncio.wait_for(transport.ready.wait(), 60)
        info = transport.info
        assert info.revision == "" and info.model_key == str(trained_model)
        both, query, embed_only = await asyncio.gather(
            transport.classify(dataclasses.replace(_request(_shape("緑の四角")), embed=True)),
            transport.classify(dataclasses.replace(_request(b"", labels=()), query="緑の四角")),
            transport.classify(dataclasses.replace(_request(_shape("緑の四角"), labels=()), embed=True)),
        )
        for result in (both, query, embed_only):
            assert result.ok, result
            assert len(result.embedding) == info.embedding_size * 4 and result.embedding_model == info.model_key
            assert math.isclose(math.hypot(*unpack_embedding(result.embedding)), 1.0, abs_tol=1e-5)
        assert both.top[0].label == "緑の四角" and query.top == () and embed_only.top == ()
        assert transport.held_bytes == 0 and transport.in_flight == 0
    finally:
        await transport.close()
        worker.stop()


# ---------------------------------------------------------------- the bot's side alone


async def test_oversized_images_never_reach_redis_and_a_full_stream_is_busy(redis_url):
    client = redis.Redis.from_url(redis_url)
    config = _config("unused", redis_url, stream_max_len=3)
    config = config.with_overrides(images={"max_bytes": 1000})
    transport = RedisWorkerTransport(config)
    _fake_heartbeat(client)
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 10)
        big = await transport.classify(_request(b"\0" * 1001))
        assert big.error is ErrorCode.TOO_LARGE and "1,000" in big.message
        assert client.xinfo_stream(STREAM)["entries-added"] == 0  # never sent
        for i in range(3):
            client.xadd(STREAM, {"filler": str(i)})
        await _until(lambda: transport.backlog >= 3, what="the backlog to be seen")
        busy = await transport.classify(_request(b"\0" * 10))
        assert busy.error is ErrorCode.QUEUE_FULL
        assert transport.reserve("x", 100).error is ErrorCode.QUEUE_FULL  # refused before any download
    finally:
        await transport.close()


async def test_with_no_worker_images_wait_a_while_then_are_unavailable_at_once(redis_url):
    """A worker restarting (or a fleet starting) gets the images posted meanwhile; a fleet that
    stays gone for request_timeout_s makes new images "unavailable" at once rather than a wait."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config("unused", redis_url, request_timeout_s=1.5))
    _fake_heartbeat(client, ttl_ms=60_000)
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 10)
        client.delete(heartbeat_key(PREFIX, "fake"))  # the only worker goes away
        await _until(lambda: transport.state == "no_workers", what="the bot to see no workers")
        waiting = asyncio.ensure_future(transport.classify(_request(b"img", deadline_s=30)))
        await _until(lambda: client.xlen(STREAM) == 1, what="the image queued for the next worker")
        _fake_heartbeat(client, name="back")  # a worker comes back and answers it
        ((_, fields),) = client.xrange(STREAM)
        client.xadd(
            fields[b"reply"],
            result_fields(ClassifyResult.failure(fields[b"id"].decode(), ErrorCode.CORRUPT, "answered")),
        )
        assert (await asyncio.wait_for(waiting, 10)).message == "answered"
        client.delete(heartbeat_key(PREFIX, "back"))
        await _until(lambda: transport.state == "no_workers", what="no workers again")
        await asyncio.sleep(1.6)  # longer than request_timeout_s without any worker
        started = time.monotonic()
        refused = await transport.classify(_request(b"img", deadline_s=30))
        assert refused.error is ErrorCode.UNAVAILABLE and "no model worker" in refused.message
        assert time.monotonic() - started < 0.5 and "redis" not in refused.message.lower()
    finally:
        await transport.close()


async def test_first_answer_wins_late_ones_are_dropped_and_a_given_up_request_is_withdrawn(redis_url):
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config("unused", redis_url))
    _fake_heartbeat(client)
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 10)
        request = _request(b"img")
        task = asyncio.ensure_future(transport.classify(request))
        await _until(lambda: client.xlen(STREAM) == 1, what="the request in the stream")
        ((entry_id, fields),) = client.xrange(STREAM)
        assert fields[b"image"] == b"img" and fields[b"reply"].decode() == replies_key(PREFIX, transport.bot_id)
        first = ClassifyResult.failure(request.id, ErrorCode.CORRUPT, "first")
        reply = fields[b"reply"].decode()
        client.xadd(reply, result_fields(first))
        client.xadd(reply, result_fields(ClassifyResult.failure(request.id, ErrorCode.INTERNAL, "second")))
        assert (await asyncio.wait_for(task, 10)).message == "first"
        await _until(lambda: transport.duplicates == 1, what="the second answer to be dropped")
        client.xadd(reply, {"id": "x", "result": "not json"})  # garbage is logged, not fatal
        # nobody answers: at the deadline the bot answers for the worker and deletes the request,
        # so a worker that has not read it yet never spends time on it
        client.xdel(STREAM, entry_id)
        late = await transport.classify(_request(b"img", deadline_s=-1.9))
        assert late.error is ErrorCode.DEADLINE_EXCEEDED
        await _until(lambda: client.xlen(STREAM) == 0, what="the given-up request to be withdrawn")
        assert transport.state == "ready" and transport.in_flight == 0
    finally:
        await transport.close()


async def test_redis_going_away_is_unavailable_and_recovers(tmp_path):
    server = RedisServer(tmp_path / "own-redis").start()
    client = server.client()
    transport = RedisWorkerTransport(_config("unused", server.url))
    _fake_heartbeat(client)
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 10)
        server.stop()
        await _until(lambda: transport.state == "unreachable", what="the bot to notice")
        refused = await transport.classify(_request(b"img"))
        assert refused.error is ErrorCode.UNAVAILABLE and "cannot be reached" in refused.message
        assert "127.0.0.1" not in refused.message and str(server.port) not in refused.message  # members see no host
        # back on the same port, empty (no persistence): the group is made again and work goes on
        server.start()
        _fake_heartbeat(server.client())
        await _until(lambda: transport.state == "ready", timeout=20, what="recovery")
        task = asyncio.ensure_future(transport.classify(_request(b"img")))
        await _until(lambda: server.client().xlen(STREAM) == 1, what="the request after recovery")
        ((_, fields),) = server.client().xrange(STREAM)
        request_id = fields[b"id"].decode()
        server.client().xadd(
            fields[b"reply"], result_fields(ClassifyResult.failure(request_id, ErrorCode.CORRUPT, "ok"))
        )
        assert (await asyncio.wait_for(task, 10)).message == "ok"
    finally:
        await transport.close()
        server.stop()


def test_protocol_entries_round_trip_binary_images_and_unicode_labels():
    from wakeru.protocol import parse_request_fields

    request = ClassifyRequest(
        id="a-1", image=bytes(range(256)), labels=("犬", "👨‍👩‍👧", "a,b"), top_k=2, deadline=1234.5
    )
    wire = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in request_fields(request, "r").items()}
    assert parse_request_fields(wire) == (request, "r")
    no_deadline = ClassifyRequest(id="b", image=b"x", labels=("猫",))
    wire = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in request_fields(no_deadline, "r").items()}
    assert parse_request_fields(wire)[0].deadline is None
    with pytest.raises((KeyError, ValueError)):
        parse_request_fields({b"id": b"x"})


async def test_a_junk_heartbeat_or_a_crash_in_a_background_loop_does_not_blind_the_bot(redis_url, caplog):
    """Valid JSON that is not an object under a heartbeat key is skipped; a loop that crashes is
    logged and started again; both keep following the workers."""
    client = redis.Redis.from_url(redis_url)
    transport = RedisWorkerTransport(_config("unused", redis_url))
    for name, junk in (("list", "[1, 2]"), ("number", "42"), ("text", '"hello"'), ("broken", "{")):
        client.set(heartbeat_key(PREFIX, name), junk)
    _fake_heartbeat(client)
    await transport.start()
    try:
        await asyncio.wait_for(transport.ready.wait(), 10)
        assert set(transport.workers) == {"fake"}
        original, crashes = transport._update_workers, []

        def crash_once(workers):
            if not crashes:
                crashes.append(1)
                raise RuntimeError("a bug in the watcher")
            original(workers)

        transport._update_workers = crash_once
        await _until(lambda: crashes, what="the crash")
        client.delete(heartbeat_key(PREFIX, "fake"))  # the watcher, started again, still notices this
        await _until(lambda: transport.state == "no_workers", what="the worker's departure to be noticed")
        assert "the worker watcher crashed; starting it again" in caplog.text
        assert "is not a worker's JSON object" in caplog.text
    finally:
        await transport.close()
    assert all(task.done() for task in transport._tasks)
