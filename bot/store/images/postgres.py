"""The image index in PostgreSQL with pgvector: for several bot processes sharing one database (storage.url
postgresql://…), the label store's own database.

- An asyncpg pool with the label store's conventions (bot/store/postgres.py): connect retried for CONNECT_RETRY_S,
  errors an operator can fix become StorageError without the password, migrations under a transaction-scoped
  advisory lock (INDEX_LOCK, not the label store's) with the version in the table image_index_schema.
- `CREATE EXTENSION IF NOT EXISTS vector` at open: a server without pgvector (or a user who may not create it) is a
  StorageError that says what to do.
- Rows: indexed_images (everything but the vector). Vectors: one table per dimension, image_vectors_<dim>, as
  halfvec(dim) (half the size of float32; cosine ranking is unchanged to ~1e-3) with an HNSW index
  (halfvec_cosine_ops) and the filter columns copied beside the vector, so the filters apply during the index scan;
  its rows go with their indexed_images row (ON DELETE CASCADE).
- Search: when the filters leave at most EXACT_MAX rows (up to a guild of 100,000 pictures, a channel, an author),
  an exact scan; otherwise the HNSW index (m HNSW_M, ef_construction HNSW_EF_CONSTRUCTION) with iterative scans
  (hnsw.iterative_scan = relaxed_order, hnsw.ef_search = EF_SEARCH, both SET LOCAL in the search's own
  transaction), re-sorted exactly, topped up by an exact scan if the index scan ran dry. At 100,000 random
  768-dim vectors (the hard case for HNSW) the exact scan gives recall@10 0.998 in 125 ms, the HNSW scan 0.917 in
  103 ms (docs/performance.md): exact wherever it is affordable.
- Bulk loads (the benchmark, a first import): drop_vector_index, add_many, build_vector_index; a build is many
  times faster than inserts into an existing graph (docs/performance.md, Image index).
- Two processes adding the same attachment store it once (INSERT … ON CONFLICT DO NOTHING).
- Embeddings travel as real[] and are cast to halfvec by the server: no numpy, no client-side vector codec. They
  come back from get() rounded to float16.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from bot.store.base import StorageError, guild_channels
from bot.store.images.base import (
    PLACES_SQL,
    BackfillJob,
    ImageIndex,
    IndexCounts,
    IndexedImage,
    IndexSettings,
    SearchHit,
    embedding_dim,
    labels_from_json,
    labels_json,
    optional_bool,
    pair,
    scope_id,
)
from bot.store.postgres import _ERRORS, CLOSE_TIMEOUT_S, PostgresLabelStore, _Server, _translate

log = logging.getLogger("wakeru.storage")

__all__ = [
    "BUILD_MEMORY",
    "EF_SEARCH",
    "EXACT_MAX",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_M",
    "INDEX_LOCK",
    "PostgresImageIndex",
    "hnsw_index_sql",
]

INDEX_LOCK = 0x5741_4B45_5249  # pg_advisory_xact_lock key of the image index's migrations and jobs ("WAKERI")
SCHEMA_TABLE = "image_index_schema"
# Filters leaving at most this many rows: an exact scan (125 ms p50 at 100,000 × 768 on 2 cores, recall 0.998 with
# halfvec's ties), else the HNSW index (103 ms there, but recall 0.917 on random vectors): docs/performance.md.
EXACT_MAX = 100_000
# HNSW settings, tuned on random unit vectors in 768 dimensions (the hard case; real embeddings cluster and do
# better): pgvector's defaults (m 16, ef_construction 64, ef_search 40) gave recall@10 of 0.16, m 16 with ef_search
# 1000 0.89 at 25,000; m 32 / ef_construction 128 reached 0.99 at 25,000 but 0.79 at 100,000; m 48 /
# ef_construction 256 gives 0.917 at 100,000 with ef_search 1000 (a 1,044 s build on 2 cores), and 0.999 on clustered
# data (bench-index --data clustered).
HNSW_M = 48
HNSW_EF_CONSTRUCTION = 256
EF_SEARCH = 1000  # candidates per HNSW scan (pgvector's largest); recall rises with it, so does the time
INSERT_CHUNK = 250  # rows per INSERT statement in add_many
BUILD_TIMEOUT_S = 3600.0  # a build of a few 100,000 vectors takes minutes
BUILD_MEMORY = "1GB"  # maintenance_work_mem while build_vector_index runs: the graph is built in memory when it fits

_NO_PGVECTOR = (
    "{where} has no pgvector extension, which the image index needs: use a PostgreSQL server with pgvector "
    "installed (e.g. the pgvector/pgvector:pg16 Docker image, or the postgresql-16-pgvector package)"
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE indexed_images (
            attachment_id BIGINT PRIMARY KEY,
            guild_id      BIGINT NOT NULL,
            channel_id    BIGINT NOT NULL,
            parent_id     BIGINT,
            message_id    BIGINT NOT NULL,
            author_id     BIGINT NOT NULL,
            posted_at     DOUBLE PRECISION NOT NULL,
            filename      TEXT NOT NULL,
            labels        TEXT NOT NULL,
            top_label     TEXT,
            model         TEXT NOT NULL,
            dim           INTEGER NOT NULL
        )
        """,
        "CREATE INDEX indexed_images_guild_model ON indexed_images (guild_id, model)",
        "CREATE INDEX indexed_images_message ON indexed_images (message_id)",
        "CREATE INDEX indexed_images_channel ON indexed_images (channel_id, posted_at)",
        "CREATE INDEX indexed_images_parent ON indexed_images (parent_id, posted_at) WHERE parent_id IS NOT NULL",
        "CREATE INDEX indexed_images_author ON indexed_images (guild_id, author_id)",
        "CREATE INDEX indexed_images_posted ON indexed_images (posted_at)",
        """
        CREATE TABLE index_settings (
            guild_id   BIGINT NOT NULL,
            channel_id BIGINT NOT NULL,
            enabled    BOOLEAN,
            reposts    BOOLEAN,
            updated_by BIGINT,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (guild_id, channel_id)
        )
        """,
        """
        CREATE TABLE not_reposts (
            guild_id     BIGINT NOT NULL,
            attachment_a BIGINT NOT NULL,
            attachment_b BIGINT NOT NULL,
            marked_by    BIGINT,
            marked_at    DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (guild_id, attachment_a, attachment_b)
        )
        """,
        "CREATE INDEX not_reposts_b ON not_reposts (guild_id, attachment_b)",
        """
        CREATE TABLE backfill_jobs (
            channel_id   BIGINT PRIMARY KEY,
            guild_id     BIGINT NOT NULL,
            requested_by BIGINT,
            since        DOUBLE PRECISION NOT NULL,
            "cursor"     BIGINT,
            done         BIGINT NOT NULL,
            total        BIGINT,
            status       TEXT NOT NULL,
            started_at   DOUBLE PRECISION NOT NULL,
            updated_at   DOUBLE PRECISION NOT NULL,
            owner        TEXT NOT NULL,
            message      TEXT,
            reembed      BOOLEAN NOT NULL
        )
        """,
        "CREATE INDEX backfill_jobs_guild ON backfill_jobs (guild_id, status)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_IMAGE_COLUMNS = (
    "attachment_id, guild_id, channel_id, parent_id, message_id, author_id, posted_at, filename, labels, model"
)
_JOB_COLUMNS = (
    'guild_id, channel_id, requested_by, since, "cursor", done, total, status, started_at, updated_at, owner, '
    "message, reembed"
)


def vector_table(dim: int) -> str:
    return f"image_vectors_{int(dim)}"


def _floats(embedding: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(embedding) // 4}f", embedding))


def _image(row: Sequence[Any], embedding: bytes = b"") -> IndexedImage:
    return IndexedImage(
        attachment_id=int(row[0]),
        guild_id=int(row[1]),
        channel_id=int(row[2]),
        parent_id=None if row[3] is None else int(row[3]),
        message_id=int(row[4]),
        author_id=int(row[5]),
        posted_at=float(row[6]),
        filename=str(row[7]),
        labels=labels_from_json(row[8]),
        model=str(row[9]),
        embedding=embedding,
    )


def _job(row: Sequence[Any]) -> BackfillJob:
    return BackfillJob(
        guild_id=int(row[0]),
        channel_id=int(row[1]),
        requested_by=None if row[2] is None else int(row[2]),
        since=float(row[3]),
        cursor=None if row[4] is None else int(row[4]),
        done=int(row[5]),
        total=None if row[6] is None else int(row[6]),
        status=row[7],
        started_at=float(row[8]),
        updated_at=float(row[9]),
        owner=str(row[10]),
        message=row[11],
        reembed=bool(row[12]),
    )


def hnsw_index_sql(dim: int) -> str:
    """The HNSW index of a vector table: cosine on the halfvec column, as search's ORDER BY embedding <=> … uses."""
    table = vector_table(dim)
    return (
        f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding halfvec_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def _insert_sql(dim: int) -> str:
    """One statement: the row, and its vector only when the row was new (so a lost race stores nothing)."""
    return (
        "WITH new AS (INSERT INTO indexed_images (attachment_id, guild_id, channel_id, parent_id, message_id, "
        "author_id, posted_at, filename, labels, top_label, model, dim) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        "ON CONFLICT (attachment_id) DO NOTHING RETURNING attachment_id) "
        f"INSERT INTO {vector_table(dim)} (attachment_id, guild_id, model, channel_id, parent_id, author_id, "
        f"message_id, posted_at, embedding) SELECT attachment_id, $2, $11, $3, $4, $6, $5, $7, "
        f"$13::real[]::halfvec({int(dim)}) FROM new"
    )


def _insert_args(image: IndexedImage, dim: int) -> tuple[Any, ...]:
    return (
        image.attachment_id,
        image.guild_id,
        image.channel_id,
        image.parent_id,
        image.message_id,
        image.author_id,
        float(image.posted_at),
        image.filename,
        labels_json(image.labels),
        image.labels[0] if image.labels else None,
        image.model,
        dim,
        _floats(image.embedding),
    )


class PostgresImageIndex(ImageIndex):
    """Create with `await PostgresImageIndex.open(url)` (or bot.store.images.open_index)."""

    def __init__(self, pool: asyncpg.Pool, server: _Server) -> None:
        self._pool: asyncpg.Pool | None = pool
        self._server = server
        self._dims: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> PostgresImageIndex:
        server = _Server.parse(url)
        index = cls(await PostgresLabelStore._pool_for(server), server)
        try:
            await index._prepare()
        except BaseException:
            await index.close()
            raise
        return index

    async def _prepare(self) -> None:
        async with self._guard() as con:
            has = await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
        if not has:
            await self._create_extension()
        async with self._transaction() as con:
            version = await self._read_version(con)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the image index in {self._server.where} has schema version {version}, newer than this bot's "
                    f"{SCHEMA_VERSION}: upgrade the bot"
                )
            if version < SCHEMA_VERSION:
                await con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
                for step in MIGRATIONS[version:]:
                    for statement in step:
                        await con.execute(statement)
                await con.execute(f"DELETE FROM {SCHEMA_TABLE}")
                await con.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES ($1)", SCHEMA_VERSION)
                log.info("image index schema at version %d", SCHEMA_VERSION)
            rows = await con.fetch(
                "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                "AND tablename ~ '^image_vectors_[0-9]+$'"
            )
        self._dims = {int(row[0].rsplit("_", 1)[1]) for row in rows}

    async def _create_extension(self) -> None:
        pool = self._pool
        assert pool is not None
        try:
            async with pool.acquire() as con, con.transaction():
                await con.execute(f"SELECT pg_advisory_xact_lock({INDEX_LOCK})")
                await con.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except (asyncpg.FeatureNotSupportedError, asyncpg.UndefinedFileError) as exc:
            raise StorageError(_NO_PGVECTOR.format(where=self._server.where)) from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            raise StorageError(
                f"user {self._server.user!r} may not create the pgvector extension in {self._server.where}: "
                f"have a superuser run CREATE EXTENSION vector; in that database once (the server needs pgvector "
                f"installed, e.g. the pgvector/pgvector:pg16 image)"
            ) from exc
        except _ERRORS as exc:
            error = _translate(exc, self._server)
            if error is None:
                raise
            raise error from exc

    @staticmethod
    async def _read_version(con: Any) -> int:
        exists = await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
            f"AND tablename = '{SCHEMA_TABLE}')"
        )
        if not exists:
            return 0
        return int(await con.fetchval(f"SELECT MAX(version) FROM {SCHEMA_TABLE}") or 0)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            import asyncio

            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except _ERRORS:
            pool.terminate()

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StorageError("the image index is closed", reason="unreachable")
        try:
            async with pool.acquire() as con:
                yield con
        except _ERRORS as exc:
            error = _translate(exc, self._server)
            if error is None:
                raise
            raise error from exc

    @asynccontextmanager
    async def _transaction(self, *, locked: bool = True) -> AsyncIterator[Any]:
        async with self._guard() as con, con.transaction():
            if locked:
                await con.execute(f"SELECT pg_advisory_xact_lock({INDEX_LOCK})")
            yield con

    async def _ensure_table(self, dim: int) -> None:
        if dim in self._dims:
            return
        table = vector_table(dim)
        async with self._transaction() as con:
            await con.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "attachment_id BIGINT PRIMARY KEY REFERENCES indexed_images (attachment_id) ON DELETE CASCADE, "
                "guild_id BIGINT NOT NULL, model TEXT NOT NULL, channel_id BIGINT NOT NULL, parent_id BIGINT, "
                "author_id BIGINT NOT NULL, message_id BIGINT NOT NULL, posted_at DOUBLE PRECISION NOT NULL, "
                f"embedding halfvec({int(dim)}) NOT NULL)"
            )
            await con.execute(f"CREATE INDEX IF NOT EXISTS {table}_guild ON {table} (guild_id, model)")
            await con.execute(hnsw_index_sql(dim))
        self._dims.add(dim)

    async def drop_vector_index(self, dim: int) -> None:
        """Drop the HNSW index of one dimension before a bulk load (add_many), then build_vector_index: building
        once is many times faster than inserting row by row into the graph. Searches meanwhile are exact scans
        (slow for big guilds): for the benchmark, a first import or a migration, not a running fleet."""
        await self._ensure_table(dim)
        async with self._transaction() as con:
            await con.execute(f"DROP INDEX IF EXISTS {vector_table(dim)}_hnsw")

    async def build_vector_index(self, dim: int) -> None:
        """(Re)build the HNSW index of one dimension if it is missing (after drop_vector_index and a bulk load)."""
        await self._ensure_table(dim)
        async with self._guard() as con, con.transaction():
            await con.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
            await con.execute(hnsw_index_sql(dim), timeout=BUILD_TIMEOUT_S)  # minutes, not the pool's timeout
            # Fresh statistics: until autovacuum gets to a table loaded in bulk, the planner thinks it small and
            # answers searches by sorting the whole guild (measured: 3 to 4 times slower than the HNSW scan).
            await con.execute(f"ANALYZE {vector_table(dim)}", timeout=BUILD_TIMEOUT_S)

    async def _known(self, dim: int) -> bool:
        if dim in self._dims:
            return True
        async with self._guard() as con:
            exists = await con.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                "AND tablename = $1)",
                vector_table(dim),
            )
        if exists:
            self._dims.add(dim)
        return bool(exists)

    # ------------------------------------------------------------------ images

    async def add(self, image: IndexedImage, *, replace: bool = False) -> bool:
        dim = embedding_dim(image.embedding)
        await self._ensure_table(dim)
        async with self._transaction(locked=False) as con:
            if replace:
                await con.execute("DELETE FROM indexed_images WHERE attachment_id = $1", image.attachment_id)
            status = await con.execute(_insert_sql(dim), *_insert_args(image, dim))
        return bool(status.endswith(" 1"))

    async def add_many(self, images: Iterable[IndexedImage]) -> int:
        """Store many images in one transaction (backfills, the benchmark); existing attachments are skipped.
        Returns how many were stored."""
        by_dim: dict[int, list[tuple[Any, ...]]] = {}
        for image in images:
            dim = embedding_dim(image.embedding)
            by_dim.setdefault(dim, []).append(_insert_args(image, dim))
        stored = 0
        for dim in by_dim:
            await self._ensure_table(dim)
        async with self._transaction(locked=False) as con:
            for dim, rows in by_dim.items():
                present = await con.fetch(
                    "SELECT attachment_id FROM indexed_images WHERE attachment_id = ANY($1::bigint[])",
                    [row[0] for row in rows],
                )
                # Chunks, so that each statement has the pool's timeout to itself: inserting into a live HNSW
                # graph costs milliseconds a row on 2 busy cores, and 3,000 rows in one statement ran past 30 s.
                for start in range(0, len(rows), INSERT_CHUNK):
                    await con.executemany(_insert_sql(dim), rows[start : start + INSERT_CHUNK])
                stored += len({row[0] for row in rows}) - len(present)
        return stored

    async def get(self, guild_id: int, message_id: int) -> list[IndexedImage]:
        async with self._guard() as con:
            rows = await con.fetch(
                f"SELECT {_IMAGE_COLUMNS}, dim FROM indexed_images WHERE guild_id = $1 AND message_id = $2 "
                "ORDER BY attachment_id",
                guild_id,
                message_id,
            )
            images = []
            for row in rows:
                dim = int(row[10])
                values = None
                if await self._known(dim):
                    values = await con.fetchval(
                        f"SELECT embedding::real[] FROM {vector_table(dim)} WHERE attachment_id = $1", row[0]
                    )
                vector = struct.pack(f"<{len(values)}f", *values) if values else b""
                images.append(_image(row, vector))
        return images

    async def search(
        self,
        guild_id: int,
        embedding: bytes,
        model: str,
        *,
        limit: int,
        channel_ids: Collection[int] | None = None,
        author_id: int | None = None,
        exclude_message_id: int | None = None,
        before: float | None = None,
    ) -> list[SearchHit]:
        dim = embedding_dim(embedding)
        if limit <= 0 or not await self._known(dim):
            return []
        channels = None if channel_ids is None else sorted(set(channel_ids))
        if channels is not None and not channels:
            return []
        table = vector_table(dim)
        params: list[Any] = [guild_id, model]
        where = ["guild_id = $1", "model = $2"]
        if channels is not None:
            params.append(channels)
            where.append(f"(channel_id = ANY(${len(params)}::bigint[]) OR parent_id = ANY(${len(params)}::bigint[]))")
        if author_id is not None:
            params.append(author_id)
            where.append(f"author_id = ${len(params)}")
        if exclude_message_id is not None:
            params.append(exclude_message_id)
            where.append(f"message_id <> ${len(params)}")
        if before is not None:
            params.append(float(before))
            where.append(f"posted_at < ${len(params)}")
        filters = " AND ".join(where)
        filter_params = list(params)
        query = f"${len(params) + 1}::real[]::halfvec({int(dim)})"
        limit_mark = f"${len(params) + 2}"
        params += [_floats(embedding), limit]
        # `+ 0` keeps the planner off the HNSW index: an exact top-k over the filtered rows.
        exact = (
            f"SELECT attachment_id, embedding <=> {query} AS distance FROM {table} WHERE {filters} "
            f"ORDER BY (embedding <=> {query}) + 0 LIMIT {limit_mark}"
        )
        async with self._transaction(locked=False) as con:
            count = await con.fetchval(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {filters} LIMIT {EXACT_MAX + 1}) AS s",
                *filter_params,
            )
            rows: list[Any] = []
            if count > EXACT_MAX:
                # SET LOCAL lasts until the end of this transaction, which the query below runs in (checked with
                # SHOW: a SET LOCAL outside a transaction block would only warn and do nothing).
                await con.execute(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, min(limit, 1000))}")
                await con.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                rows = list(
                    await con.fetch(
                        f"SELECT attachment_id, embedding <=> {query} AS distance FROM {table} WHERE {filters} "
                        f"ORDER BY embedding <=> {query} LIMIT {limit_mark}",
                        *params,
                    )
                )
            if len(rows) < min(limit, count):  # exact path, or the index scan ran out (hnsw.max_scan_tuples)
                rows = list(await con.fetch(exact, *params))
            best = sorted(((int(r[0]), float(r[1])) for r in rows), key=lambda item: (item[1], item[0]))[:limit]
            if not best:
                return []
            found = await con.fetch(
                f"SELECT {_IMAGE_COLUMNS} FROM indexed_images WHERE attachment_id = ANY($1::bigint[])",
                [attachment_id for attachment_id, _ in best],
            )
        images = {int(row[0]): _image(row) for row in found}
        return [
            SearchHit(image=images[attachment_id], score=1.0 - distance)
            for attachment_id, distance in best
            if attachment_id in images
        ]

    # ------------------------------------------------------------------ deletion (vectors follow by cascade)

    async def _delete(self, where: str, *args: Any) -> int:
        async with self._transaction(locked=False) as con:
            status = await con.execute(f"DELETE FROM indexed_images WHERE {where}", *args)
        return int(status.rsplit(" ", 1)[1])

    async def delete_messages(self, message_ids: Collection[int]) -> int:
        ids = sorted(set(message_ids))
        return await self._delete("message_id = ANY($1::bigint[])", ids) if ids else 0

    async def keep_attachments(self, message_id: int, attachment_ids: Collection[int]) -> int:
        return await self._delete(
            "message_id = $1 AND NOT (attachment_id = ANY($2::bigint[]))", message_id, sorted(set(attachment_ids))
        )

    async def delete_channel(self, channel_id: int) -> int:
        async with self._transaction(locked=False) as con:
            threads = [
                int(row[0])
                for row in await con.fetch(
                    "SELECT DISTINCT channel_id FROM indexed_images WHERE parent_id = $1", channel_id
                )
            ]
            status = await con.execute("DELETE FROM indexed_images WHERE channel_id = $1 OR parent_id = $1", channel_id)
            scopes = [scope for scope in [channel_id, *threads] if scope != 0]
            await con.execute("DELETE FROM index_settings WHERE channel_id = ANY($1::bigint[])", scopes)
            await con.execute("DELETE FROM backfill_jobs WHERE channel_id = ANY($1::bigint[])", scopes)
        return int(status.rsplit(" ", 1)[1])

    async def delete_guild(self, guild_id: int) -> int:
        async with self._transaction(locked=False) as con:
            status = await con.execute("DELETE FROM indexed_images WHERE guild_id = $1", guild_id)
            for table in ("index_settings", "not_reposts", "backfill_jobs"):
                await con.execute(f"DELETE FROM {table} WHERE guild_id = $1", guild_id)
        return int(status.rsplit(" ", 1)[1])

    async def delete_author(self, guild_id: int, author_id: int) -> int:
        return await self._delete("guild_id = $1 AND author_id = $2", guild_id, author_id)

    async def expire(self, before: float) -> int:
        return await self._delete("posted_at < $1", float(before))

    async def places(self) -> dict[int, set[int]]:
        async with self._guard() as con:
            return guild_channels(await con.fetch(PLACES_SQL))

    # ------------------------------------------------------------------ counts, statistics, re-embedding

    async def counts(self, guild_id: int, model: str) -> IndexCounts:
        async with self._guard() as con:
            row = await con.fetchrow(
                "SELECT count(*), count(*) FILTER (WHERE model = $2) FROM indexed_images WHERE guild_id = $1",
                guild_id,
                model,
            )
        total, current = int(row[0]), int(row[1])
        return IndexCounts(total=total, current=current, stale=total - current)

    async def top_label_counts(self, guild_id: int, channel_id: int, since: float) -> dict[str, int]:
        async with self._guard() as con:
            rows = await con.fetch(
                "SELECT top_label, count(*) FROM indexed_images WHERE guild_id = $1 AND (channel_id = $2 OR "
                "parent_id = $2) AND posted_at >= $3 AND top_label IS NOT NULL GROUP BY top_label "
                "ORDER BY count(*) DESC, top_label",
                guild_id,
                channel_id,
                float(since),
            )
        return {str(row[0]): int(row[1]) for row in rows}

    async def stale(self, guild_id: int, channel_id: int, model: str, *, limit: int) -> list[IndexedImage]:
        async with self._guard() as con:
            rows = await con.fetch(
                f"SELECT {_IMAGE_COLUMNS} FROM indexed_images WHERE guild_id = $1 AND (channel_id = $2 OR "
                "parent_id = $2) AND model <> $3 ORDER BY posted_at, attachment_id LIMIT $4",
                guild_id,
                channel_id,
                model,
                max(0, limit),
            )
        return [_image(row) for row in rows]

    # ------------------------------------------------------------------ settings and repost decisions

    async def get_settings(self, guild_id: int, channel_id: int | None) -> IndexSettings:
        async with self._guard() as con:
            row = await con.fetchrow(
                "SELECT enabled, reposts FROM index_settings WHERE guild_id = $1 AND channel_id = $2",
                guild_id,
                scope_id(channel_id),
            )
        if row is None:
            return IndexSettings()
        return IndexSettings(enabled=optional_bool(row[0]), reposts=optional_bool(row[1]))

    async def _set(
        self, column: str, guild_id: int, channel_id: int | None, value: bool | None, user: int | None
    ) -> None:
        async with self._transaction(locked=False) as con:
            await con.execute(
                f"INSERT INTO index_settings (guild_id, channel_id, {column}, updated_by, updated_at) "
                f"VALUES ($1, $2, $3, $4, $5) ON CONFLICT (guild_id, channel_id) DO UPDATE SET "
                f"{column} = EXCLUDED.{column}, updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at",
                guild_id,
                scope_id(channel_id),
                value,
                user,
                time.time(),
            )
            await con.execute(
                "DELETE FROM index_settings WHERE guild_id = $1 AND channel_id = $2 AND enabled IS NULL "
                "AND reposts IS NULL",
                guild_id,
                scope_id(channel_id),
            )

    async def set_enabled(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        await self._set("enabled", guild_id, channel_id, enabled, user_id)

    async def set_reposts(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        await self._set("reposts", guild_id, channel_id, enabled, user_id)

    async def mark_not_repost(self, guild_id: int, attachment_a: int, attachment_b: int, *, user_id: int) -> None:
        a, b = pair(attachment_a, attachment_b)
        async with self._guard() as con:
            await con.execute(
                "INSERT INTO not_reposts (guild_id, attachment_a, attachment_b, marked_by, marked_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                guild_id,
                a,
                b,
                user_id,
                time.time(),
            )

    async def not_reposts(self, guild_id: int, attachment_id: int, candidates: Sequence[int]) -> set[int]:
        wanted = set(candidates)
        if not wanted:
            return set()
        async with self._guard() as con:
            rows = await con.fetch(
                "SELECT attachment_b FROM not_reposts WHERE guild_id = $1 AND attachment_a = $2 "
                "UNION SELECT attachment_a FROM not_reposts WHERE guild_id = $1 AND attachment_b = $2",
                guild_id,
                attachment_id,
            )
        return {int(row[0]) for row in rows} & wanted

    # ------------------------------------------------------------------ backfill jobs

    async def start_backfill(self, job: BackfillJob, *, stale_after: float) -> BackfillJob | None:
        async with self._transaction() as con:  # INDEX_LOCK: the check and the write are one step everywhere
            row = await con.fetchrow(
                "SELECT status, updated_at FROM backfill_jobs WHERE channel_id = $1", job.channel_id
            )
            if row is not None and row[0] == "running" and float(row[1]) > stale_after:
                return None
            await con.execute("DELETE FROM backfill_jobs WHERE channel_id = $1", job.channel_id)
            await con.execute(
                f"INSERT INTO backfill_jobs ({_JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
                "$12, $13)",
                job.guild_id,
                job.channel_id,
                job.requested_by,
                job.since,
                job.cursor,
                job.done,
                job.total,
                job.status,
                job.started_at,
                job.updated_at,
                job.owner,
                job.message,
                job.reembed,
            )
        return job

    async def update_backfill(self, job: BackfillJob) -> None:
        async with self._guard() as con:
            await con.execute(
                'UPDATE backfill_jobs SET "cursor" = $1, done = $2, total = $3, status = $4, updated_at = $5, '
                "message = $6 WHERE channel_id = $7",
                job.cursor,
                job.done,
                job.total,
                job.status,
                job.updated_at,
                job.message,
                job.channel_id,
            )

    async def get_backfill(self, channel_id: int) -> BackfillJob | None:
        async with self._guard() as con:
            row = await con.fetchrow(f"SELECT {_JOB_COLUMNS} FROM backfill_jobs WHERE channel_id = $1", channel_id)
        return None if row is None else _job(row)

    async def running_backfills(self, guild_ids: Collection[int]) -> list[BackfillJob]:
        guilds = sorted(set(guild_ids))
        if not guilds:
            return []
        async with self._guard() as con:
            rows = await con.fetch(
                f"SELECT {_JOB_COLUMNS} FROM backfill_jobs WHERE status = 'running' AND "
                "guild_id = ANY($1::bigint[]) ORDER BY started_at, channel_id",
                guilds,
            )
        return [_job(row) for row in rows]
