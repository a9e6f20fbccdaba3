"""The scaled-out deployment on one machine: two `python -m bot` processes (shard 0 and shard 1
of 2) and two `python -m model_worker serve` workers, talking through a real Redis and sharing
label sets in a real PostgreSQL, against one fake Discord. The workers run the real command line
and Redis consumer around the torch-free stand-in engine (tests/support/stub_worker.py); real
model workers serve through Redis in tests/bot/transport/test_redis_streams.py.

Every image is answered once, by the process owning its shard; a worker killed mid-stream
leaves its pending requests to the other, and still nobody gets two answers.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.support import flows
from tests.support.bot_process import sharded_bots
from tests.support.fake_discord import FakeDiscord, shard_of
from tests.support.postgres_server import postgres_server  # noqa: F401
from tests.support.redis_server import WorkerProcess, redis_server, wait_for_workers  # noqa: F401
from wakeru.protocol import REQUESTS_GROUP, requests_key

pytestmark = pytest.mark.slow  # bot processes and real model workers

SHARDS = (0, 1)
PREFIX = "wakeru"
STREAM = requests_key(PREFIX)
SHAPES = ["赤い丸", "青い四角", "緑の丸", "赤い四角", "青い丸", "緑の四角"]


@pytest.fixture(scope="module")
def cluster(stub_model, tmp_path_factory, redis_server, postgres_server):
    root = tmp_path_factory.mktemp("cluster")
    redis_server.client().flushall()
    store_url = postgres_server.create_database("scale_out")
    if postgres_server.pgvector:  # the image index too, as an operator sets it up (a superuser creates it)
        postgres_server.sql("CREATE EXTENSION IF NOT EXISTS vector", "scale_out")
    workers = [
        WorkerProcess(stub_model, redis_server.url, root, name=f"worker{i}", worker="stub").start() for i in range(2)
    ]
    with FakeDiscord() as fake:
        guilds, tokens, bots = sharded_bots(
            fake,
            stub_model,
            root,
            SHARDS,
            WAKERU_STORAGE__URL=store_url,
            WAKERU_WORKER__TRANSPORT="redis",
            WAKERU_WORKER__REDIS_URL=redis_server.url,
            WAKERU_WORKER__HEARTBEAT_S="0.2",
        )
        try:
            wait_for_workers(redis_server.client(), PREFIX, 2, processes=tuple(workers))
            for k in SHARDS:
                bots[k].start(wait=False)
            fake.wait_shards_ready(2, timeout=150)
            for k in SHARDS:
                bots[k].wait_serving()
            yield fake, guilds, tokens, bots, workers, redis_server, postgres_server
        finally:
            codes = {k: bots[k].stop() for k in SHARDS}
            for w in workers:
                w.terminate()  # all at once: each takes a moment to finish its blocking read
            for w in workers:
                w.stop()
        assert codes == {0: 0, 1: 0}, {k: bots[k].log() for k in SHARDS}


def _channels(fake, guilds) -> list[int]:
    return [guilds[0].channel_id, guilds[1].channel_id, fake.channel_id]  # fake.channel_id: the first guild


def _post_all(fake, guilds, seeds) -> list[dict]:
    return [
        flows.post_image(fake, channel, SHAPES[seed % 6], seed % 6)
        for seed in seeds
        for channel in _channels(fake, guilds)
    ]


def _check_answered_once(fake, tokens, posts: list[dict], mark: int) -> dict[str, dict]:
    answers = flows.wait_replies(fake, posts, mark, timeout=120)
    flows.sentinel(fake, sorted({int(p["channel_id"]) for p in posts}))  # a second answer would come before these
    replies = flows.replies(fake, mark)
    assert all(len(replies[str(p["id"])]) == 1 for p in posts), {
        str(p["id"]): len(replies[str(p["id"])]) for p in posts
    }
    for post in posts:
        reply = answers[str(post["id"])]
        assert reply["token"] == tokens[shard_of(int(post["guild_id"]), 2)]  # the process owning the shard
    return answers


def _check_labels(posts: list[dict], answers: dict[str, dict]) -> None:
    per_channel = len(posts) // len({p["channel_id"] for p in posts})
    got = [flows.top_label(answers[str(p["id"])]["embeds"][0]) for p in posts]
    assert got == [SHAPES[i // (len(posts) // per_channel) % 6] for i in range(len(posts))]


def test_every_post_of_both_shards_is_answered_once_through_redis(cluster):
    fake, guilds, tokens, bots, workers, redis_server, pg = cluster
    for channel in _channels(fake, guilds):
        assert flows.set_labels(fake, flows.LABELS, channel_id=channel)["content"]
    # the label sets live in PostgreSQL, written by both processes (each for its own servers)
    stored = pg.sql("SELECT count(*) FROM label_sets", database="scale_out")
    assert stored == str(len(_channels(fake, guilds)))
    mark = fake.mark()
    posts = _post_all(fake, guilds, range(6))
    answers = _check_answered_once(fake, tokens, posts, mark)
    _check_labels(posts, answers)
    client = redis_server.client()
    assert client.xlen(STREAM) == 0 and client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
    for k in SHARDS:  # each bot sees both workers through their heartbeats
        state = bots[k].state()
        assert state["transport"] == "redis" and state["workers"] == 2, state


def test_a_worker_killed_mid_stream_leaves_its_requests_to_the_other(cluster, tmp_path):
    """A third worker, slowed down so it holds what it reads, is SIGKILLed while holding requests
    of both bot processes; the others take them over after claim_idle_s and answer each once."""
    fake, guilds, tokens, bots, workers, redis_server, pg = cluster
    client = redis.Redis.from_url(redis_server.url)
    slow = WorkerProcess(
        workers[0].env["WAKERU_MODEL__ID"],
        redis_server.url,
        tmp_path,
        name="slow",
        worker="stub",
        WAKERU_FAULTS="batch_delay_ms=600000",
    ).start()
    try:
        wait_for_workers(client, PREFIX, 3, processes=(slow,))
        mark = fake.mark()
        posts = _post_all(fake, guilds, range(8))

        def held() -> int:
            return sum(
                c["pending"]
                for c in client.xinfo_consumers(STREAM, REQUESTS_GROUP)
                if f"-{slow.pid}-" in c["name"].decode()
            )

        deadline = time.monotonic() + 60
        while held() == 0:
            assert time.monotonic() < deadline, "the slow worker never took a request"
            time.sleep(0.02)
        slow.kill()
        taken = held()
        answers = _check_answered_once(fake, tokens, posts, mark)
        _check_labels(posts, answers)
        assert taken >= 1
        assert any("took over" in w.log() for w in workers), [w.log()[-2000:] for w in workers]
        assert client.xpending(STREAM, REQUESTS_GROUP)["pending"] == 0
        for k in SHARDS:
            assert bots[k].process.poll() is None
    finally:
        slow.stop()
