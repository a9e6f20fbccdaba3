"""Sharding (discord.shard_count / discord.shard_ids): two real `python -m bot` processes, each
running one shard of two against one fake Discord and one shared SQLite label store, each with its
own local model worker (the torch-free stand-in of tests/support/stub_worker.py: sharding is the
bot's business); plus the client factory and `shard_count: auto` in process.

Each process logs in with its own token (the fake accepts several for the same bot) so that every
gateway session, REST call and reply tells which process it came from.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time

import discord
import discord.gateway
import discord.http
import pytest

from bot.cli import use_endpoints
from bot.face.client import WakeruClient, WakeruShardedClient, describe_shards, make_client
from bot.services import metrics
from tests.conftest import make_config
from tests.support import flows
from tests.support.bot_process import BotProcess, sharded_bots
from tests.support.fake_discord import FakeDiscord, shard_of

SHARDS = (0, 1)


@pytest.fixture(scope="module")
def world(stub_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    db = root / "labels.db"
    with FakeDiscord() as fake:
        guilds, tokens, bots = sharded_bots(
            fake, stub_model, root, SHARDS, worker="stub", WAKERU_STORAGE__URL=f"sqlite:///{db}"
        )
        try:
            for k in SHARDS:
                bots[k].start(wait=False)
            fake.wait_shards_ready(2, timeout=150)
            for k in SHARDS:
                bots[k].wait_serving()
            yield fake, guilds, tokens, bots, db
        finally:
            codes = {k: bots[k].stop() for k in SHARDS}
        assert codes == {0: 0, 1: 0}, {k: bots[k].log() for k in SHARDS}


@pytest.fixture
def sharded(world):
    fake, guilds, tokens, bots, db = world
    for k in SHARDS:
        if bots[k].process.poll() is not None:
            pytest.fail(f"bot of shard {k} died:\n{bots[k].log()}")
    yield world
    assert not fake.unknown_requests, fake.unknown_requests
    assert not fake.invalid_requests, fake.invalid_requests
    assert not fake.refused_identifies, fake.refused_identifies


@pytest.mark.slow
def test_each_process_identifies_with_its_own_shard(sharded):
    fake, guilds, tokens, bots, _ = sharded
    assert {d["token"]: d["shard"] for d in fake.identify_payloads} == {tokens[0]: [0, 2], tokens[1]: [1, 2]}
    live = {s["token"]: s["shard"] for s in fake.sessions() if s["ready"]}
    assert live == {tokens[0]: (0, 2), tokens[1]: (1, 2)}
    assert not any(r["path"] == "/gateway/bot" for r in fake.requests)  # a fixed count needs no asking
    for k in SHARDS:
        log = bots[k].full_log()
        assert f"sharding: this process runs shard {k} of 2" in log, log
        assert re.search(rf"shard {k} of 2 ready: {1 + k} server\(s\)", log), log  # shard 1 has the first guild


@pytest.mark.slow
def test_image_posts_are_answered_once_each_by_the_process_owning_the_shard(sharded):
    fake, guilds, tokens, bots, _ = sharded
    channels = [guilds[0].channel_id, guilds[1].channel_id, fake.channel_id]  # the first guild: shard 1
    for channel in channels:
        assert flows.set_labels(fake, flows.LABELS, channel_id=channel)["content"]
    mark = fake.mark()
    posts = [
        flows.post_image(fake, channel, label, seed)
        for seed, label in enumerate(["赤い丸", "青い四角", "緑の丸", "赤い四角", "青い丸", "緑の四角"])
        for channel in channels
    ]
    answers = flows.wait_replies(fake, posts, mark)
    flows.sentinel(fake, channels)  # a duplicate (from the other process, or a retry) would come before these
    replies = flows.replies(fake, mark)
    assert all(len(replies[str(p["id"])]) == 1 for p in posts), {
        str(p["id"]): len(replies[str(p["id"])]) for p in posts
    }
    logs = {k: bots[k].full_log() for k in SHARDS}
    for post in posts:
        shard = shard_of(int(post["guild_id"]), 2)
        assert [d["token"] for d in fake.delivered(post["id"])] == [tokens[shard]]  # only its shard saw it
        reply = answers[str(post["id"])]
        assert reply["token"] == tokens[shard]  # the reply came from the owning process
        assert reply["embeds"][0]["title"] == post["attachments"][0]["filename"]
        assert f"replied to message {post['id']}" in logs[shard]
        assert f"replied to message {post['id']}" not in logs[1 - shard]


@pytest.mark.slow
def test_classify_is_answered_once_in_each_shard(sharded):
    fake, guilds, tokens, bots, _ = sharded
    for k in SHARDS:
        rec = fake.interact(
            "classify",
            channel_id=guilds[k].other_channel_id,
            options=[{"type": 3, "name": "labels", "value": "赤い丸, 青い丸, 緑の丸"}],
            attachments={"image": ("mine.png", flows.png("青い丸", 40 + k), "image/png")},
        )
        final = rec.wait_final(timeout=60)
        assert flows.top_label(final["embeds"][0]) == "青い丸"
        # the sentinel: another command in the same shard; a second answer to the first comes before it
        again = fake.interact(
            "classify",
            channel_id=guilds[k].other_channel_id,
            options=[{"type": 3, "name": "labels", "value": "赤い丸, 青い丸, 緑の丸"}],
            attachments={"image": ("again.png", flows.png("赤い丸", 50 + k), "image/png")},
        )
        assert flows.top_label(again.wait_final(timeout=60)["embeds"][0]) == "赤い丸"
        assert [r["type"] for r in rec.responses] == [5] and len(rec.timeline) == 1 and not rec.failed
        assert [d["token"] for d in fake.delivered(rec.id)] == [tokens[k]]
        here = f"command classify from user {fake.member_id} in channel {guilds[k].other_channel_id}"
        assert here in bots[k].full_log() and here not in bots[1 - k].full_log()


@pytest.mark.slow
def test_a_label_set_changed_in_shard_1_is_used_by_its_process(sharded):
    fake, guilds, tokens, bots, db = sharded
    channel = guilds[1].other_channel_id
    answer = flows.set_labels(fake, "赤い丸、青い四角", channel_id=channel)
    assert "v1" in answer["content"] and "2件" in answer["content"]
    with sqlite3.connect(db) as con:  # the one store both processes share
        rows = con.execute(
            "SELECT guild_id, channel_id, version FROM label_sets WHERE guild_id = ?", (guilds[1].id,)
        ).fetchall()
    assert (guilds[1].id, channel, 1) in rows
    mark = fake.mark()
    post = flows.post_image(fake, channel, "赤い丸", 7)
    reply = flows.wait_replies(fake, [post], mark)[str(post["id"])]
    embed = reply["embeds"][0]
    assert reply["token"] == tokens[1]
    assert flows.top_label(embed) == "赤い丸"
    assert f"<#{channel}> のラベルセット（2件・v1）" in embed["description"]
    assert embed["description"].count("%") == 2  # only the two labels of this channel's set


# ---------------------------------------------------------------- in process


def test_make_client_picks_the_class_from_the_config():
    plain = make_client(None, make_config())
    assert type(plain) is WakeruClient and not isinstance(plain, discord.AutoShardedClient)
    fixed = make_client(None, make_config(discord={"shard_count": 4, "shard_ids": [1, 3]}), message_content=False)
    assert isinstance(fixed, WakeruShardedClient) and isinstance(fixed, discord.AutoShardedClient)
    assert (fixed.shard_count, fixed.shard_ids, fixed.intents.message_content) == (4, [1, 3], False)
    assert fixed.describe_shards() == "shards 1,3 of 4"
    every = make_client(None, make_config(discord={"shard_count": 2}))
    assert (every.shard_count, every.shard_ids, every.describe_shards()) == (2, None, "shards 0,1 of 2")
    auto = make_client(None, make_config(discord={"shard_count": "auto"}))
    assert isinstance(auto, WakeruShardedClient) and (auto.shard_count, auto.shard_ids) == (None, None)
    assert describe_shards([2], 3) == "shard 2 of 3"
    for client in (plain, fixed, every, auto):
        assert client.tree.client is client and client.app is None
        assert not client.is_ready()


def test_shard_count_auto_asks_discord_and_runs_every_recommended_shard():
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    with FakeDiscord() as fake:
        fake.recommended_shards = 3
        guilds = [fake.add_guild(shard=k, shard_count=3) for k in range(3)]
        config = make_config(
            discord={"shard_count": "auto", "api_base": fake.api_base, "gateway_url": fake.gateway_url}
        )
        use_endpoints(config)
        ready_before = metrics.GATEWAY_SESSIONS.labels("ready")._value.get()
        client = make_client(None, config)

        async def quick(shard_id, *, initial=False):  # discord.py waits 5 s between IDENTIFYs by default
            await asyncio.sleep(0.05)

        client.before_identify_hook = quick
        loop: list[asyncio.AbstractEventLoop] = []
        errors: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                loop.append(asyncio.get_running_loop())
                async with client:
                    await client.start(fake.token)

            try:
                asyncio.run(main())
            except BaseException as e:  # reported below
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            fake.wait_shards_ready(3, timeout=20)
            fake.wait_for(lambda: client.is_ready() or errors, 20, "the client to be ready")
            assert not errors, errors
            assert [r["path"] for r in fake.requests].count("/gateway/bot") == 1
            assert sorted(tuple(d["shard"]) for d in fake.identify_payloads) == [(0, 3), (1, 3), (2, 3)]
            assert client.shard_count == 3 and sorted(client.shards) == [0, 1, 2]
            assert client.describe_shards() == "shards 0,1,2 of 3"
            by_shard = {g.id: g.shard_id for g in client.guilds}
            assert by_shard == {**{g.id: k for k, g in enumerate(guilds)}, fake.guild_id: shard_of(fake.guild_id, 3)}
            fake.wait_for(
                lambda: metrics.GATEWAY_SESSIONS.labels("ready")._value.get() - ready_before >= 3,
                10,
                "one READY counted per shard",
            )
            assert metrics.GATEWAY_SESSIONS.labels("ready")._value.get() - ready_before == 3
            # One shard drops and RESUMEs on its own; the others stay up.
            resumed_before = metrics.GATEWAY_SESSIONS.labels("resumed")._value.get()
            t0 = time.monotonic()
            assert fake.disconnect_all(4000, shard=1) == 1
            fake.wait_reconnected(t0, timeout=15)
            fake.wait_for(
                lambda: metrics.GATEWAY_SESSIONS.labels("resumed")._value.get() > resumed_before,
                10,
                "the resume counted",
            )
            assert metrics.GATEWAY_SESSIONS.labels("resumed")._value.get() == resumed_before + 1
            assert fake.ready_shards(3) == {0, 1, 2} and client.is_ready()
        finally:
            if loop and thread.is_alive():
                asyncio.run_coroutine_threadsafe(client.close(), loop[0]).result(10)
            thread.join(10)
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
        assert not errors, errors
        assert fake.unknown_requests == [] and fake.refused_identifies == []


@pytest.mark.slow
def test_an_invalid_shard_stops_the_bot_with_a_clear_error(tmp_path, stub_model):
    """Two processes disagreeing on shard_count: Discord (the fake) closes the second with 4010."""
    with FakeDiscord() as fake:
        first = BotProcess(
            fake, stub_model, tmp_path, worker="stub", WAKERU_DISCORD__SHARD_COUNT="2", WAKERU_DISCORD__SHARD_IDS="[0]"
        )
        (tmp_path / "other").mkdir()
        other = BotProcess(
            fake,
            stub_model,
            tmp_path / "other",
            worker="stub",
            WAKERU_DISCORD__SHARD_COUNT="3",
            WAKERU_DISCORD__SHARD_IDS="[1]",
        )
        first.start(wait=False)
        try:
            fake.wait_shards_ready(2, [0], timeout=60)
            other.start(wait=False)
            assert other.process.wait(60) == 2, other.log()
        finally:
            first.stop()
        assert "gateway close 4010, invalid shard" in other.log()
        assert [r["code"] for r in fake.refused_identifies] == [4010]
