"""The image index in SQLite (the default): the label store's own file, sqlite-vec for the vectors.

- The same database file as the label store (storage.url sqlite:///…), on a connection of its own: Python's sqlite3
  may be built without extension loading, so this connection is made by `sqlean` (a drop-in sqlite3 that can load
  extensions) with `sqlite_vec` loaded into it, wrapped by aiosqlite so that it runs in its own thread and never
  blocks the event loop. WAL mode and the busy timeout as the label store; an asyncio lock serialises whole
  transactions; writes run in BEGIN IMMEDIATE (atomic across processes).
- Its own schema version (table image_index_schema) and migrations: the file's PRAGMA user_version belongs to the
  label store.
- Rows: the plain table indexed_images (everything but the vector). Vectors: one vec0 virtual table per embedding
  dimension, image_vectors_<dim>, created on first use, float32 with cosine distance, guild_id as partition key
  and the filter columns (model, channel, parent, author, message, posted_at) as vec0 metadata columns. The file is
  the store of record: rows and vectors live there and nothing else needs deploying.
- Search is exact (recall 1.0) and answered from memory: a VectorCache holds, per (guild, model, dimension), the
  guild's vectors as one contiguous float32 numpy matrix with parallel id/channel/parent/author/message/time arrays,
  loaded lazily by the first search of that guild and kept up to date in place by this object's own writes. A search
  is one BLAS matrix-vector product and np.argpartition, run in a thread (asyncio.to_thread); the filters are
  boolean masks on the parallel arrays (a selective filter multiplies only the rows it keeps). 100,000 × 768 is
  ~300 MB: the cache is an LRU over guilds within `cache_bytes` (DEFAULT_CACHE_BYTES, 1 GiB); a guild that does not
  fit, or cache_bytes=0, is searched by sqlite-vec's exact scan inside the file (vec0 KNN with the filters as
  metadata constraints; "channel_id or parent_id in channel_ids" is two scans merged, as vec0 has no OR).
- Other writers of the same file (a second index object, a CLI): every write that adds or removes rows bumps the
  guild's counter in index_generations in the same transaction; a search compares it with the cached matrix's (one
  indexed read) and reloads the guild on a mismatch, so a cache never answers from data another writer changed.
  Measured (docs/performance.md, Image index): 100,000 × 768 in one guild, sqlite-vec's scan ~90 ms (its PyPI wheel's
  distance loops are scalar), the cached matrix ~20 ms. Quantised pre-selection (bit vectors) was 6× faster than
  the scan but its recall far too low on hard data, int8 no faster than float32, so vectors stay float32 and exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import numpy as np
import sqlean  # type: ignore[import-untyped]
import sqlite_vec  # type: ignore[import-untyped]

from bot.store.base import BUSY_TIMEOUT_MS, StorageError, guild_channels
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
from bot.store.sqlite import _storage_error, database_path, immutable_target, on_read_only_volume

log = logging.getLogger("wakeru.storage")

__all__ = ["DEFAULT_CACHE_BYTES", "MIGRATIONS", "SCHEMA_TABLE", "SCHEMA_VERSION", "SQLiteImageIndex", "VectorCache"]

SCHEMA_TABLE = "image_index_schema"
MMAP_BYTES = 1 << 30  # vec0 scans read every vector of a guild: mapped pages halve the copy cost (measured)
MAX_K = 4096  # vec0's largest k
DEFAULT_CACHE_BYTES = 1 << 30  # the in-memory search matrices of all guilds together (100,000 × 768 ≈ 300 MB)
LOAD_CHUNK = 2048  # rows per fetch while a guild's matrix is loaded

# Step i (1-based) brings the index schema to version i. Never edit a released step: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE indexed_images (
            attachment_id INTEGER PRIMARY KEY,
            guild_id      INTEGER NOT NULL,
            channel_id    INTEGER NOT NULL,
            parent_id     INTEGER,
            message_id    INTEGER NOT NULL,
            author_id     INTEGER NOT NULL,
            posted_at     REAL NOT NULL,
            filename      TEXT NOT NULL,
            labels        TEXT NOT NULL,          -- JSON array, best first
            top_label     TEXT,
            model         TEXT NOT NULL,
            dim           INTEGER NOT NULL        -- which image_vectors_<dim> holds its vector
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
            guild_id   INTEGER NOT NULL,
            channel_id INTEGER NOT NULL,          -- 0 = server-wide
            enabled    INTEGER,
            reposts    INTEGER,
            updated_by INTEGER,
            updated_at REAL NOT NULL,
            PRIMARY KEY (guild_id, channel_id)
        )
        """,
        """
        CREATE TABLE not_reposts (
            guild_id     INTEGER NOT NULL,
            attachment_a INTEGER NOT NULL,        -- the smaller id
            attachment_b INTEGER NOT NULL,
            marked_by    INTEGER,
            marked_at    REAL NOT NULL,
            PRIMARY KEY (guild_id, attachment_a, attachment_b)
        )
        """,
        "CREATE INDEX not_reposts_b ON not_reposts (guild_id, attachment_b)",
        """
        CREATE TABLE backfill_jobs (
            channel_id   INTEGER PRIMARY KEY,
            guild_id     INTEGER NOT NULL,
            requested_by INTEGER,
            since        REAL NOT NULL,
            cursor       INTEGER,
            done         INTEGER NOT NULL,
            total        INTEGER,
            status       TEXT NOT NULL,
            started_at   REAL NOT NULL,
            updated_at   REAL NOT NULL,
            owner        TEXT NOT NULL,
            message      TEXT,
            reembed      INTEGER NOT NULL
        )
        """,
        "CREATE INDEX backfill_jobs_guild ON backfill_jobs (guild_id, status)",
        # Model keys as small integers for the vec0 tables: vec0 compares text metadata longer than 12 bytes
        # through a lookup per row, which made a search 2.5× slower with real model keys (measured).
        "CREATE TABLE index_models (model_id INTEGER PRIMARY KEY, model TEXT NOT NULL UNIQUE)",
    ),
    (
        # Bumped in the same transaction as every write that adds or removes a guild's rows: in-memory search
        # matrices (VectorCache) compare it before each search and reload on a mismatch (another writer).
        # Never reset (a deleted guild keeps its row), so a counter value never comes back with other contents.
        "CREATE TABLE index_generations (guild_id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_IMAGE_COLUMNS = (
    "attachment_id, guild_id, channel_id, parent_id, message_id, author_id, posted_at, filename, labels, model"
)
_JOB_COLUMNS = (
    "guild_id, channel_id, requested_by, since, cursor, done, total, status, started_at, updated_at, owner, "
    "message, reembed"
)


def vector_table(dim: int) -> str:
    return f"image_vectors_{int(dim)}"


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


def _job_values(job: BackfillJob) -> tuple[Any, ...]:
    return (
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
        int(job.reembed),
    )


def _marks(count: int) -> str:
    return ",".join("?" * count)


# ------------------------------------------------------------------ the in-memory search matrices

_COLUMNS = 6  # attachment, channel, parent (0 = none), author, message ids; posted_at (float64) beside them


def row_bytes(dim: int) -> int:
    """What one cached image costs: its float32 vector and the filter columns."""
    return 4 * dim + 8 * _COLUMNS


def _unit(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (so a dot product is the cosine, as sqlite-vec's cosine distance); 0 stays 0."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class _Matrix:
    """One (guild, model, dimension): the vectors (rows normalised) and their filter columns, rows 0..n-1 in use.
    Changed only on the event loop, under VectorCache.lock; searched in a thread under the same lock."""

    def __init__(self, key: tuple[int, int, int], generation: int, capacity: int) -> None:
        self.key = key
        self.generation = generation
        dim = key[2]
        capacity = max(16, capacity)
        self.n = 0
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.channel = np.zeros(capacity, dtype=np.int64)
        self.parent = np.zeros(capacity, dtype=np.int64)
        self.author = np.zeros(capacity, dtype=np.int64)
        self.message = np.zeros(capacity, dtype=np.int64)
        self.posted = np.zeros(capacity, dtype=np.float64)
        self.rows: dict[int, int] = {}  # attachment id → row

    @property
    def nbytes(self) -> int:
        return len(self.ids) * row_bytes(self.key[2])

    def _grow(self, needed: int) -> None:
        capacity = len(self.ids)
        if needed <= capacity:
            return
        capacity = max(needed, capacity + capacity // 4 + 16)
        for name in ("vectors", "ids", "channel", "parent", "author", "message", "posted"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def extend(self, rows: Sequence[Sequence[Any]]) -> None:
        """rows: (attachment_id, channel_id, parent_id, author_id, message_id, posted_at, embedding bytes)."""
        rows = [row for row in rows if int(row[0]) not in self.rows]
        if not rows:
            return
        dim = self.key[2]
        self._grow(self.n + len(rows))
        start, stop = self.n, self.n + len(rows)
        block = np.frombuffer(b"".join(bytes(row[6]) for row in rows), dtype="<f4").reshape(len(rows), dim)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, norms, out=self.vectors[start:stop], where=norms > 0)
        self.vectors[start:stop][(norms == 0).ravel()] = 0
        for column, name in enumerate(("ids", "channel", "parent", "author", "message")):
            getattr(self, name)[start:stop] = [int(row[column] or 0) for row in rows]
        self.posted[start:stop] = [float(row[5]) for row in rows]
        for offset, row in enumerate(rows):
            self.rows[int(row[0])] = start + offset
        self.n = stop

    def remove(self, attachment_id: int) -> None:
        row = self.rows.pop(attachment_id, None)
        if row is None:
            return
        last = self.n - 1
        if row != last:  # the last row takes the freed place
            for name in ("vectors", "ids", "channel", "parent", "author", "message", "posted"):
                array = getattr(self, name)
                array[row] = array[last]
            self.rows[int(self.ids[row])] = row
        self.n = last

    def search(
        self,
        query: np.ndarray,
        limit: int,
        channels: np.ndarray | None,
        author_id: int | None,
        exclude_message_id: int | None,
        before: float | None,
    ) -> list[tuple[int, float]]:
        """The best `limit` (attachment id, cosine distance), ordered by (distance, id) as the vec0 scan is."""
        n = self.n
        mask: np.ndarray | None = None

        def both(selected: np.ndarray) -> None:
            nonlocal mask
            mask = selected if mask is None else mask & selected

        if channels is not None:
            both(np.isin(self.channel[:n], channels) | np.isin(self.parent[:n], channels))
        if author_id is not None:
            both(self.author[:n] == author_id)
        if exclude_message_id is not None:
            both(self.message[:n] != exclude_message_id)
        if before is not None:
            both(self.posted[:n] < before)
        if mask is None:
            rows = None
            scores = self.vectors[:n] @ query
        else:
            rows = np.flatnonzero(mask)
            # A selective filter multiplies only its rows; a loose one multiplies all (no gather copy).
            scores = self.vectors[rows] @ query if len(rows) * 4 < n else (self.vectors[:n] @ query)[rows]
        k = min(limit, len(scores))
        if k <= 0:
            return []
        if k < len(scores):
            kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
            picked = np.flatnonzero(scores >= kth)  # every tie at the boundary, so ids break ties as in SQL
        else:
            picked = np.arange(len(scores))
        found = picked if rows is None else rows[picked]
        ids = self.ids[found]
        best = scores[picked]
        order = np.lexsort((ids, -best))[:k]
        return [(int(ids[i]), 1.0 - float(best[i])) for i in order]


@dataclass
class _Changes:
    """What one write transaction did to the rows, per guild in order: applied to the cached matrices after the
    commit. ("remove", attachment_id) or ("add", (model_id, dim), row as _Matrix.extend takes it)."""

    ops: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)

    def removed(self, guild_id: int, attachment_id: int) -> None:
        self.ops.setdefault(guild_id, []).append(("remove", attachment_id))

    def added(self, image: IndexedImage, model_id: int, dim: int) -> None:
        row = (
            image.attachment_id,
            image.channel_id,
            image.parent_id or 0,
            image.author_id,
            image.message_id,
            float(image.posted_at),
            image.embedding,
        )
        self.ops.setdefault(image.guild_id, []).append(("add", (model_id, dim), row))


class VectorCache:
    """The search matrices of the guilds searched lately, least recently used first, within max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.lock = asyncio.Lock()  # held while a matrix is searched (in a thread) or changed
        self._matrices: OrderedDict[tuple[int, int, int], _Matrix] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(matrix.nbytes for matrix in self._matrices.values())

    def fits(self, rows: int, dim: int) -> bool:
        return self.max_bytes > 0 and (rows + rows // 16 + 16) * row_bytes(dim) <= self.max_bytes

    def get(self, key: tuple[int, int, int], generation: int) -> _Matrix | None:
        matrix = self._matrices.get(key)
        if matrix is None:
            return None
        if matrix.generation != generation:  # another writer changed the guild: load it again
            self.drop_guild(key[0])
            return None
        self._matrices.move_to_end(key)
        return matrix

    def put(self, matrix: _Matrix) -> None:
        self._matrices[matrix.key] = matrix
        self._matrices.move_to_end(matrix.key)
        self._trim()

    def drop_guild(self, guild_id: int) -> None:
        for key in [key for key in self._matrices if key[0] == guild_id]:
            del self._matrices[key]

    def clear(self) -> None:
        self._matrices.clear()

    def _trim(self) -> None:
        total = self.nbytes
        while self._matrices and total > self.max_bytes:
            _, evicted = self._matrices.popitem(last=False)
            total -= evicted.nbytes

    def apply(self, changes: _Changes, generations: dict[int, int]) -> None:
        """A committed write: `generations` holds each touched guild's new counter. A matrix that was current
        just before it (counter - 1) takes the changes; any other is dropped (someone else wrote in between)."""
        for guild_id, generation in generations.items():
            for key in [key for key in self._matrices if key[0] == guild_id]:
                matrix = self._matrices[key]
                if matrix.generation != generation - 1:
                    del self._matrices[key]
                    continue
                for op in changes.ops.get(guild_id, ()):
                    if op[0] == "remove":
                        matrix.remove(op[1])
                    elif (guild_id, *op[1]) == key:
                        matrix.extend([op[2]])
                matrix.generation = generation
        self._trim()


class SQLiteImageIndex(ImageIndex):
    """Create with `await SQLiteImageIndex.open(url)` (or bot.store.images.open_index).

    cache_bytes: the memory the in-memory search matrices may take together (DEFAULT_CACHE_BYTES); 0 searches
    every guild with sqlite-vec's scan in the file."""

    def __init__(self, db: aiosqlite.Connection, path: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._db: aiosqlite.Connection | None = db
        self._path = path
        self._lock = asyncio.Lock()
        self._dims: set[int] = set()  # vector tables known to exist
        self._models: dict[str, int] = {}  # model key → index_models.model_id (never changes once given)
        self._cache = VectorCache(cache_bytes)
        self._changes: _Changes | None = None  # the running write transaction's (under self._lock)
        self.read_only = False  # opened immutable on a read-only file system: searches only

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> SQLiteImageIndex:
        path = database_path(url)
        try:
            return await cls._open_at(path, path, cache_bytes, read_only=False)
        except StorageError:
            if not on_read_only_volume(path):
                raise
        # A read-only volume (as for the label store): open the file immutable. Searches work; every change is
        # refused with a read_only StorageError.
        index = await cls._open_at(immutable_target(path), path, cache_bytes, read_only=True)
        log.warning("the image index in %s is on a read-only file system: it can be searched but not changed", path)
        return index

    @classmethod
    async def _open_at(cls, target: str, path: str, cache_bytes: int, *, read_only: bool) -> SQLiteImageIndex:
        def connect() -> Any:
            con = sqlean.connect(
                target,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
                uri=target.startswith("file:"),
            )
            try:
                con.enable_load_extension(True)
                sqlite_vec.load(con)
                con.enable_load_extension(False)
            except Exception:
                con.close()
                raise
            return con

        try:
            db = await aiosqlite.Connection(connect, iter_chunk_size=64)
        except sqlean.Error as exc:
            raise (_storage_error(exc, path) or StorageError(f"cannot open the database {path!r}: {exc}")) from exc
        except (AttributeError, OSError) as exc:  # no extension loading, or the extension file is unusable
            raise StorageError(f"cannot load sqlite-vec into the database connection ({exc})") from exc
        index = cls(db, path, cache_bytes=cache_bytes)
        index.read_only = read_only
        try:
            await index._prepare()
        except BaseException:
            await index.close()
            raise
        return index

    async def _prepare(self) -> None:
        async with self._guard() as db:
            await db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            await db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while not self.read_only:  # a fresh file being switched to WAL by another process answers "locked" at once
                try:
                    await db.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlean.OperationalError as exc:
                    if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
        if await self._version() < SCHEMA_VERSION:
            if self.read_only:
                raise StorageError(
                    f"the image index in {self._path!r} needs schema version {SCHEMA_VERSION} and the file is on a "
                    f"read-only file system: mount it writable once so the bot can bring it up to date",
                    reason="read_only",
                )
            async with self._transaction() as db:
                await self._migrate(db)
        elif await self._version() > SCHEMA_VERSION:
            raise StorageError(
                f"the image index in {self._path!r} has schema version {await self._version()}, newer than this "
                f"bot's {SCHEMA_VERSION}: upgrade the bot"
            )
        async with self._guard() as db:
            self._dims = await self._vector_dims(db)
        if not self.read_only:
            await self._drop_orphan_vectors()

    async def _drop_orphan_vectors(self) -> None:
        """Vectors whose row is gone (a delete that an older version let half through): never searched again."""
        for dim in sorted(self._dims):
            async with self._transaction() as db:
                cursor = await db.execute(
                    f"DELETE FROM {vector_table(dim)} WHERE attachment_id NOT IN (SELECT attachment_id FROM indexed_images)"
                )
                if cursor.rowcount and cursor.rowcount > 0:
                    log.warning(
                        "image index: removed %d vector(s) of %d dims left without their row", cursor.rowcount, dim
                    )

    @staticmethod
    async def _vector_dims(db: aiosqlite.Connection) -> set[int]:
        """The dimensions whose vector tables exist in the file."""
        rows = await db.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'image_vectors_[0-9]*' "
            "AND sql LIKE 'CREATE VIRTUAL TABLE%'"
        )
        return {int(str(row[0]).rsplit("_", 1)[1]) for row in rows}

    async def _version(self) -> int:
        async with self._guard() as db:
            return await self._read_version(db)

    @staticmethod
    async def _read_version(db: aiosqlite.Connection) -> int:
        rows = list(
            await db.execute_fetchall(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{SCHEMA_TABLE}'")
        )
        if not rows:
            return 0
        rows = list(await db.execute_fetchall(f"SELECT MAX(version) FROM {SCHEMA_TABLE}"))
        return int(rows[0][0] or 0)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        version = await self._read_version(db)  # again, under the write lock: another process may have done it
        if version >= SCHEMA_VERSION:
            return
        await db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        for step in MIGRATIONS[version:]:
            for statement in step:
                await db.execute(statement)
        await db.execute(f"DELETE FROM {SCHEMA_TABLE}")
        await db.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (?)", (SCHEMA_VERSION,))
        log.info("image index schema at version %d", SCHEMA_VERSION)

    async def close(self) -> None:
        async with self._lock:
            db, self._db = self._db, None
            self._cache.clear()
            if db is not None:
                await db.close()

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            if self._db is None:
                raise StorageError("the image index is closed", reason="unreachable")
            try:
                yield self._db
            except sqlean.Error as exc:
                mapped = _storage_error(exc, self._path)
                if mapped is None:
                    raise
                raise mapped from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._guard() as db:
            await db.execute("BEGIN IMMEDIATE")
            changes = self._changes = _Changes()
            try:
                yield db
                generations: dict[int, int] = {}
                for guild_id in sorted(changes.ops):  # the guilds whose rows changed: one bump each, same commit
                    rows = list(
                        await db.execute_fetchall(
                            "INSERT INTO index_generations (guild_id, generation) VALUES (?, 1) ON CONFLICT "
                            "(guild_id) DO UPDATE SET generation = generation + 1 RETURNING generation",
                            (guild_id,),
                        )
                    )
                    generations[guild_id] = int(rows[0][0])
                await db.execute("COMMIT")
            except BaseException:
                # What this transaction created (a vector table, a model number) may be gone: look it up again,
                # from the file (forgetting the tables that do exist would leave vectors behind in deletes).
                self._models.clear()
                if db.in_transaction:
                    try:
                        await db.execute("ROLLBACK")
                    except sqlean.Error:
                        pass
                try:
                    self._dims = await self._vector_dims(db)
                except sqlean.Error:
                    pass  # the connection is unusable; the next statement says so
                raise
            finally:
                self._changes = None
            if generations:  # still under self._lock: no search sees the new counter before the matrices have it
                async with self._cache.lock:
                    self._cache.apply(changes, generations)

    async def _ensure_table(self, db: aiosqlite.Connection, dim: int) -> None:
        if dim in self._dims:
            return
        await db.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {vector_table(dim)} USING vec0("
            "attachment_id INTEGER PRIMARY KEY, guild_id INTEGER PARTITION KEY, model_id INTEGER, channel_id INTEGER, "
            "parent_id INTEGER, author_id INTEGER, message_id INTEGER, posted_at FLOAT, "
            f"embedding FLOAT[{int(dim)}] distance_metric=cosine)"
        )
        self._dims.add(dim)

    async def _delete_rows(self, db: aiosqlite.Connection, where: str, params: Sequence[Any]) -> int:
        """Delete the indexed_images rows matching `where`, and their vectors (vec0 has no foreign keys)."""
        rows = list(
            await db.execute_fetchall(f"SELECT attachment_id, dim, guild_id FROM indexed_images WHERE {where}", params)
        )
        if not rows:
            return 0
        by_dim: dict[int, list[tuple[int]]] = {}
        for attachment_id, dim, guild_id in rows:
            by_dim.setdefault(int(dim), []).append((int(attachment_id),))
            self._changed().removed(int(guild_id), int(attachment_id))
        for dim, ids in by_dim.items():
            if dim in self._dims:
                await db.executemany(f"DELETE FROM {vector_table(dim)} WHERE attachment_id = ?", ids)
        all_ids = [ids[0] for group in by_dim.values() for ids in group]
        for start in range(0, len(all_ids), 500):
            chunk = all_ids[start : start + 500]
            await db.execute(f"DELETE FROM indexed_images WHERE attachment_id IN ({_marks(len(chunk))})", chunk)
        return len(rows)

    # ------------------------------------------------------------------ images

    async def add(self, image: IndexedImage, *, replace: bool = False) -> bool:
        dim = embedding_dim(image.embedding)
        async with self._transaction() as db:
            await self._ensure_table(db, dim)
            existing = list(
                await db.execute_fetchall(
                    "SELECT dim FROM indexed_images WHERE attachment_id = ?", (image.attachment_id,)
                )
            )
            if existing:
                if not replace:
                    return False
                await self._delete_rows(db, "attachment_id = ?", (image.attachment_id,))
            await db.execute(
                "INSERT INTO indexed_images (attachment_id, guild_id, channel_id, parent_id, message_id, author_id, "
                "posted_at, filename, labels, top_label, model, dim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image.attachment_id,
                    image.guild_id,
                    image.channel_id,
                    image.parent_id,
                    image.message_id,
                    image.author_id,
                    image.posted_at,
                    image.filename,
                    labels_json(image.labels),
                    image.labels[0] if image.labels else None,
                    image.model,
                    dim,
                ),
            )
            model_id = await self._model_id(db, image.model)
            await db.execute(
                f"INSERT INTO {vector_table(dim)} (attachment_id, guild_id, model_id, channel_id, parent_id, author_id, "
                "message_id, posted_at, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image.attachment_id,
                    image.guild_id,
                    model_id,
                    image.channel_id,
                    image.parent_id or 0,
                    image.author_id,
                    image.message_id,
                    float(image.posted_at),
                    image.embedding,
                ),
            )
            self._changed().added(image, model_id, dim)
            return True

    async def add_many(self, images: Iterable[IndexedImage]) -> int:
        """Store many images in one transaction (backfills, the benchmark); existing attachments are skipped.
        Returns how many were stored."""
        batch = list(images)
        dims = {image.attachment_id: embedding_dim(image.embedding) for image in batch}
        async with self._transaction() as db:
            present: set[int] = set()
            ids = list(dims)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await db.execute_fetchall(
                    f"SELECT attachment_id FROM indexed_images WHERE attachment_id IN ({_marks(len(chunk))})", chunk
                )
                present.update(int(row[0]) for row in rows)
            new: dict[int, IndexedImage] = {}
            for image in batch:
                if image.attachment_id not in present:
                    new.setdefault(image.attachment_id, image)
            await db.executemany(
                "INSERT INTO indexed_images (attachment_id, guild_id, channel_id, parent_id, message_id, author_id, "
                "posted_at, filename, labels, top_label, model, dim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.attachment_id,
                        i.guild_id,
                        i.channel_id,
                        i.parent_id,
                        i.message_id,
                        i.author_id,
                        i.posted_at,
                        i.filename,
                        labels_json(i.labels),
                        i.labels[0] if i.labels else None,
                        i.model,
                        dims[i.attachment_id],
                    )
                    for i in new.values()
                ],
            )
            model_ids = {model: await self._model_id(db, model) for model in {i.model for i in new.values()}}
            for dim in sorted({dims[a] for a in new}):
                await self._ensure_table(db, dim)
                await db.executemany(
                    f"INSERT INTO {vector_table(dim)} (attachment_id, guild_id, model_id, channel_id, parent_id, "
                    "author_id, message_id, posted_at, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            i.attachment_id,
                            i.guild_id,
                            model_ids[i.model],
                            i.channel_id,
                            i.parent_id or 0,
                            i.author_id,
                            i.message_id,
                            float(i.posted_at),
                            i.embedding,
                        )
                        for i in new.values()
                        if dims[i.attachment_id] == dim
                    ],
                )
            changes = self._changed()
            for i in new.values():
                changes.added(i, model_ids[i.model], dims[i.attachment_id])
        return len(new)

    def _changed(self) -> _Changes:
        """The running write transaction's change list (only inside `_transaction`)."""
        assert self._changes is not None, "rows change only inside _transaction"
        return self._changes

    async def get(self, guild_id: int, message_id: int) -> list[IndexedImage]:
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {_IMAGE_COLUMNS}, dim FROM indexed_images WHERE guild_id = ? AND message_id = ? "
                    "ORDER BY attachment_id",
                    (guild_id, message_id),
                )
            )
            images = []
            for row in rows:
                dim = int(row[10])
                vector = b""
                if dim in self._dims:
                    found = list(
                        await db.execute_fetchall(
                            f"SELECT embedding FROM {vector_table(dim)} WHERE attachment_id = ?", (row[0],)
                        )
                    )
                    vector = bytes(found[0][0]) if found else b""
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
        if limit <= 0 or (dim not in self._dims and not await self._has_table(dim)):
            return []
        channels = None if channel_ids is None else sorted(set(channel_ids))
        if channels is not None and not channels:
            return []
        model_id = await self._known_model(model)
        if model_id is None:
            return []
        matrix = await self._matrix(guild_id, model_id, dim)
        if matrix is not None:
            query = _unit(np.frombuffer(embedding, dtype="<f4").astype(np.float32))
            wanted = None if channels is None else np.asarray(channels, dtype=np.int64)
            async with self._cache.lock:
                work = asyncio.ensure_future(
                    asyncio.to_thread(
                        matrix.search,
                        query,
                        limit,
                        wanted,
                        author_id,
                        exclude_message_id,
                        None if before is None else float(before),
                    )
                )
                try:
                    best = await asyncio.shield(work)
                except asyncio.CancelledError:
                    await asyncio.wait([work])  # keep the lock until the thread has let go of the matrix
                    raise
        else:
            best = await self._scan(
                guild_id, embedding, model_id, dim, limit, channels, author_id, exclude_message_id, before
            )
        if not best:
            return []
        ids = [attachment_id for attachment_id, _ in best]
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_IMAGE_COLUMNS} FROM indexed_images WHERE attachment_id IN ({_marks(len(ids))})", ids
            )
        images = {int(row[0]): _image(row) for row in rows}
        return [
            SearchHit(image=images[attachment_id], score=1.0 - distance)
            for attachment_id, distance in best
            if attachment_id in images  # deleted since the search
        ]

    async def _generation(self, db: aiosqlite.Connection, guild_id: int) -> int:
        rows = list(
            await db.execute_fetchall("SELECT generation FROM index_generations WHERE guild_id = ?", (guild_id,))
        )
        return int(rows[0][0]) if rows else 0

    async def _matrix(self, guild_id: int, model_id: int, dim: int) -> _Matrix | None:
        """The guild's current search matrix for this model and dimension, loaded if needed; None when it does not
        fit the cache (search with sqlite-vec then)."""
        if self._cache.max_bytes <= 0:
            return None
        key = (guild_id, model_id, dim)
        async with self._guard() as db:
            matrix = self._cache.get(key, await self._generation(db, guild_id))
            if matrix is not None:
                return matrix
            await db.execute("BEGIN")  # one read snapshot: the counter and the rows loaded agree
            try:
                generation = await self._generation(db, guild_id)
                rows = list(
                    await db.execute_fetchall(
                        "SELECT COUNT(*) FROM indexed_images WHERE guild_id = ? AND model = "
                        "(SELECT model FROM index_models WHERE model_id = ?) AND dim = ?",
                        (guild_id, model_id, dim),
                    )
                )
                count = int(rows[0][0])
                if not self._cache.fits(count, dim):
                    return None
                started = time.perf_counter()
                matrix = _Matrix(key, generation, count + count // 16 + 16)
                async with db.execute(
                    "SELECT attachment_id, channel_id, parent_id, author_id, message_id, posted_at, embedding "
                    f"FROM {vector_table(dim)} WHERE guild_id = ? AND model_id = ?",
                    (guild_id, model_id),
                ) as cursor:
                    while batch := await cursor.fetchmany(LOAD_CHUNK):
                        matrix.extend(list(batch))
            finally:
                await db.execute("COMMIT")  # nothing was written
        if count >= 10_000:
            log.info(
                "image index: loaded %d vectors of guild %d into memory in %.1f s",
                matrix.n,
                guild_id,
                time.perf_counter() - started,
            )
        self._cache.put(matrix)
        return matrix

    async def _scan(
        self,
        guild_id: int,
        embedding: bytes,
        model_id: int,
        dim: int,
        limit: int,
        channels: list[int] | None,
        author_id: int | None,
        exclude_message_id: int | None,
        before: float | None,
    ) -> list[tuple[int, float]]:
        """sqlite-vec's exact scan in the file (a guild too big for the cache): (attachment id, distance), best first."""
        where = ["embedding MATCH ?", "k = ?", "guild_id = ?", "model_id = ?"]
        params: list[Any] = [embedding, min(limit, MAX_K), guild_id, model_id]
        if author_id is not None:
            where.append("author_id = ?")
            params.append(author_id)
        if exclude_message_id is not None:
            where.append("message_id != ?")
            params.append(exclude_message_id)
        if before is not None:
            where.append("posted_at < ?")
            params.append(float(before))
        base = f"SELECT attachment_id, distance FROM {vector_table(dim)} WHERE {' AND '.join(where)}"
        if channels is None:
            queries = [(base, params)]
        else:
            # channel_id IN (…) OR parent_id IN (…): vec0 has no OR, so one exact scan per column, merged.
            queries = [
                (f"{base} AND {column} IN ({_marks(len(channels))})", [*params, *channels])
                for column in ("channel_id", "parent_id")
            ]
        distances: dict[int, float] = {}
        async with self._guard() as db:
            for sql, args in queries:
                for attachment_id, distance in await db.execute_fetchall(sql, args):
                    distances[int(attachment_id)] = float(distance)
        return sorted(distances.items(), key=lambda item: (item[1], item[0]))[:limit]

    async def _model_id(self, db: aiosqlite.Connection, model: str) -> int:
        """The model key's number (created if new); inside a write transaction."""
        if model not in self._models:
            await db.execute("INSERT INTO index_models (model) VALUES (?) ON CONFLICT (model) DO NOTHING", (model,))
            rows = list(await db.execute_fetchall("SELECT model_id FROM index_models WHERE model = ?", (model,)))
            self._models[model] = int(rows[0][0])
        return self._models[model]

    async def _known_model(self, model: str) -> int | None:
        if model not in self._models:
            async with self._guard() as db:
                rows = list(await db.execute_fetchall("SELECT model_id FROM index_models WHERE model = ?", (model,)))
            if not rows:
                return None
            self._models[model] = int(rows[0][0])
        return self._models[model]

    async def _has_table(self, dim: int) -> bool:
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (vector_table(dim),)
                )
            )
        if rows:
            self._dims.add(dim)  # another process created it
        return bool(rows)

    # ------------------------------------------------------------------ deletion

    async def delete_messages(self, message_ids: Collection[int]) -> int:
        ids = list(set(message_ids))
        deleted = 0
        async with self._transaction() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                deleted += await self._delete_rows(db, f"message_id IN ({_marks(len(chunk))})", chunk)
        return deleted

    async def keep_attachments(self, message_id: int, attachment_ids: Collection[int]) -> int:
        keep = list(set(attachment_ids))
        where = "message_id = ?" + (f" AND attachment_id NOT IN ({_marks(len(keep))})" if keep else "")
        async with self._transaction() as db:
            return await self._delete_rows(db, where, [message_id, *keep])

    async def delete_channel(self, channel_id: int) -> int:
        async with self._transaction() as db:
            threads = [
                int(row[0])
                for row in await db.execute_fetchall(
                    "SELECT DISTINCT channel_id FROM indexed_images WHERE parent_id = ?", (channel_id,)
                )
            ]
            deleted = await self._delete_rows(db, "channel_id = ? OR parent_id = ?", (channel_id, channel_id))
            for scope in [channel_id, *threads]:
                if scope == 0:
                    continue
                await db.execute("DELETE FROM index_settings WHERE channel_id = ?", (scope,))
                await db.execute("DELETE FROM backfill_jobs WHERE channel_id = ?", (scope,))
            return deleted

    async def delete_guild(self, guild_id: int) -> int:
        async with self._transaction() as db:
            deleted = await self._delete_rows(db, "guild_id = ?", (guild_id,))
            for table in ("index_settings", "not_reposts", "backfill_jobs"):
                await db.execute(f"DELETE FROM {table} WHERE guild_id = ?", (guild_id,))
            return deleted

    async def delete_author(self, guild_id: int, author_id: int) -> int:
        async with self._transaction() as db:
            return await self._delete_rows(db, "guild_id = ? AND author_id = ?", (guild_id, author_id))

    async def expire(self, before: float) -> int:
        async with self._transaction() as db:
            return await self._delete_rows(db, "posted_at < ?", (float(before),))

    async def places(self) -> dict[int, set[int]]:
        async with self._guard() as db:
            return guild_channels(await db.execute_fetchall(PLACES_SQL))

    # ------------------------------------------------------------------ counts, statistics, re-embedding

    async def counts(self, guild_id: int, model: str) -> IndexCounts:
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT COUNT(*), COALESCE(SUM(model = ?), 0) FROM indexed_images WHERE guild_id = ?",
                    (model, guild_id),
                )
            )
        total, current = int(rows[0][0]), int(rows[0][1])
        return IndexCounts(total=total, current=current, stale=total - current)

    async def top_label_counts(self, guild_id: int, channel_id: int, since: float) -> dict[str, int]:
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT top_label, COUNT(*) FROM indexed_images WHERE guild_id = ? AND (channel_id = ? OR "
                "parent_id = ?) AND posted_at >= ? AND top_label IS NOT NULL GROUP BY top_label "
                "ORDER BY COUNT(*) DESC, top_label",
                (guild_id, channel_id, channel_id, float(since)),
            )
        return {str(label): int(count) for label, count in rows}

    async def stale(self, guild_id: int, channel_id: int, model: str, *, limit: int) -> list[IndexedImage]:
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_IMAGE_COLUMNS} FROM indexed_images WHERE guild_id = ? AND (channel_id = ? OR "
                "parent_id = ?) AND model != ? ORDER BY posted_at, attachment_id LIMIT ?",
                (guild_id, channel_id, channel_id, model, max(0, limit)),
            )
        return [_image(row) for row in rows]

    # ------------------------------------------------------------------ settings and repost decisions

    async def get_settings(self, guild_id: int, channel_id: int | None) -> IndexSettings:
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT enabled, reposts FROM index_settings WHERE guild_id = ? AND channel_id = ?",
                    (guild_id, scope_id(channel_id)),
                )
            )
        if not rows:
            return IndexSettings()
        return IndexSettings(enabled=optional_bool(rows[0][0]), reposts=optional_bool(rows[0][1]))

    async def _set(
        self, column: str, guild_id: int, channel_id: int | None, value: bool | None, user: int | None
    ) -> None:
        stored = None if value is None else int(value)
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO index_settings (guild_id, channel_id, {column}, updated_by, updated_at) "
                f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, channel_id) DO UPDATE SET {column} = excluded.{column}, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (guild_id, scope_id(channel_id), stored, user, time.time()),
            )
            await db.execute(
                "DELETE FROM index_settings WHERE guild_id = ? AND channel_id = ? AND enabled IS NULL "
                "AND reposts IS NULL",
                (guild_id, scope_id(channel_id)),
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
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO not_reposts (guild_id, attachment_a, attachment_b, marked_by, marked_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (guild_id, a, b, user_id, time.time()),
            )

    async def not_reposts(self, guild_id: int, attachment_id: int, candidates: Sequence[int]) -> set[int]:
        wanted = set(candidates)
        if not wanted:
            return set()
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT attachment_b FROM not_reposts WHERE guild_id = ? AND attachment_a = ? "
                "UNION SELECT attachment_a FROM not_reposts WHERE guild_id = ? AND attachment_b = ?",
                (guild_id, attachment_id, guild_id, attachment_id),
            )
        return {int(row[0]) for row in rows} & wanted

    # ------------------------------------------------------------------ backfill jobs

    async def start_backfill(self, job: BackfillJob, *, stale_after: float) -> BackfillJob | None:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT status, updated_at FROM backfill_jobs WHERE channel_id = ?", (job.channel_id,)
                )
            )
            if rows and rows[0][0] == "running" and float(rows[0][1]) > stale_after:
                return None
            await db.execute("DELETE FROM backfill_jobs WHERE channel_id = ?", (job.channel_id,))
            await db.execute(
                f"INSERT INTO backfill_jobs ({_JOB_COLUMNS}) VALUES ({_marks(13)})",
                _job_values(job),
            )
        return job

    async def update_backfill(self, job: BackfillJob) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE backfill_jobs SET cursor = ?, done = ?, total = ?, status = ?, updated_at = ?, message = ? "
                "WHERE channel_id = ?",
                (job.cursor, job.done, job.total, job.status, job.updated_at, job.message, job.channel_id),
            )

    async def get_backfill(self, channel_id: int) -> BackfillJob | None:
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {_JOB_COLUMNS} FROM backfill_jobs WHERE channel_id = ?", (channel_id,)
                )
            )
        return _job(rows[0]) if rows else None

    async def running_backfills(self, guild_ids: Collection[int]) -> list[BackfillJob]:
        guilds = list(set(guild_ids))
        if not guilds:
            return []
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_JOB_COLUMNS} FROM backfill_jobs WHERE status = 'running' AND guild_id IN "
                f"({_marks(len(guilds))}) ORDER BY started_at, channel_id",
                guilds,
            )
        return [_job(row) for row in rows]
