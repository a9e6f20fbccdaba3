"""bot.services.reconcile: what was deleted on Discord while the bot was offline leaves the index and the
corrections at the next READY, on real SQLite and PostgreSQL stores; guilds of other shards and unavailable
guilds are left alone."""

from __future__ import annotations

import pytest

from bot.services.reconcile import Reconciled, reconcile, shard_owner
from bot.store import Correction, StorageError, open_store
from bot.store.images import IndexedImage, open_index
from wakeru.protocol import pack_embedding

KEPT, GONE_CHANNEL, THREAD = 10, 11, 12  # THREAD is a thread of GONE_CHANNEL
G, GONE_GUILD, OTHER_SHARD, OUTAGE = 1 << 22, 2 << 22, 3 << 22, 5 << 22  # shards 1, 2, 3, 5 of 8


def _image(attachment_id: int, guild_id: int, channel_id: int, parent_id: int | None = None) -> IndexedImage:
    return IndexedImage(
        guild_id=guild_id,
        channel_id=channel_id,
        parent_id=parent_id,
        message_id=attachment_id * 10,
        attachment_id=attachment_id,
        author_id=7,
        posted_at=1000.0,
        filename="a.png",
        labels=("犬",),
        model="m@r1",
        embedding=pack_embedding([1.0, 0.0, 0.0, 0.0]),
    )


def _correction(attachment_id: int, guild_id: int, channel_id: int, parent_id: int | None = None) -> Correction:
    return Correction(
        guild_id, channel_id, parent_id, attachment_id * 10, attachment_id, 7, "犬", "猫", ("犬", "猫"), 1.0
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request, tmp_path):
    url = f"sqlite:///{tmp_path}/wakeru.db" if request.param == "sqlite" else request.getfixturevalue("pgvector_url")
    index, store = await open_index(url), await open_store(url)
    places = [(G, KEPT, None), (G, THREAD, GONE_CHANNEL), (G, GONE_CHANNEL, None), (GONE_GUILD, 20, None)]
    places += [(OTHER_SHARD, 30, None), (OUTAGE, 40, None)]
    for n, (guild, channel, parent) in enumerate(places, start=1):
        await index.add(_image(n, guild, channel, parent))
        await store.record_correction(_correction(n, guild, channel, parent))
    await index.set_enabled(G, GONE_CHANNEL, True, user_id=1)
    yield index, store
    await index.close()
    await store.close()


async def test_gone_channels_and_guilds_are_removed_and_the_rest_stays(stores):
    index, store = stores
    present = {G: frozenset({KEPT, 99}), OUTAGE: None}  # OUTAGE: unavailable; GONE_GUILD: not there any more
    owns = shard_owner(8, [1, 2, 5])  # OTHER_SHARD's guild belongs to another process
    done = await reconcile(index, store, present, owns)
    assert done == Reconciled(guilds=1, channels=1, rows=3, corrections=3)
    assert await index.places() == {G: {KEPT}, OTHER_SHARD: {30}, OUTAGE: {40}}
    assert await store.correction_places() == {G: {KEPT}, OTHER_SHARD: {30}, OUTAGE: {40}}
    assert (await index.get_settings(G, GONE_CHANNEL)).enabled is None  # the gone channel's switch went too
    # a second READY finds nothing more
    assert await reconcile(index, store, present, owns) == Reconciled()


async def test_an_index_error_is_logged_and_the_corrections_are_still_checked(stores, monkeypatch, caplog):
    index, store = stores

    async def broken() -> dict[int, set[int]]:
        raise StorageError("the database is locked", reason="busy")

    monkeypatch.setattr(index, "places", broken)
    done = await reconcile(index, store, {G: frozenset({KEPT, GONE_CHANNEL})}, shard_owner(None, None))
    assert done.rows == 0 and done.corrections == 3  # GONE_GUILD, OTHER_SHARD, OUTAGE: not in `present`
    assert "start-up check of the index: the database is locked" in caplog.text


def test_shard_owner_follows_discords_rule():
    assert shard_owner(None, None)(123) and shard_owner(1, None)(123)
    owns = shard_owner(4, [0, 2])
    assert owns(0 << 22) and owns((2 << 22) + 5) and not owns(1 << 22) and not owns(7 << 22)
    assert all(shard_owner(4, None)(g << 22) for g in range(4))
