"""The image index: `open_index(storage.url)` picks the backend, as bot.store.open_store does for label sets.

base.py holds the records and the ImageIndex interface; sqlite.py (SQLite + sqlite-vec, the default, in the label
store's own file) and postgres.py (PostgreSQL + pgvector, for several bot processes) the backends.
"""

from __future__ import annotations

from bot.store.base import POSTGRES_SCHEMES, StorageError, url_scheme
from bot.store.images.base import (
    BackfillJob,
    BackfillStatus,
    ImageIndex,
    IndexCounts,
    IndexedImage,
    IndexSettings,
    SearchHit,
)

__all__ = [
    "BackfillJob",
    "BackfillStatus",
    "ImageIndex",
    "IndexCounts",
    "IndexSettings",
    "IndexedImage",
    "SearchHit",
    "StorageError",
    "open_index",
]


async def open_index(url: str, *, memory_bytes: int | None = None) -> ImageIndex:
    """Open the image index storage.url names: SQLite + sqlite-vec for sqlite:///…, PostgreSQL + pgvector for
    postgresql:// or postgres://. memory_bytes: the SQLite index's budget for in-memory search (index.memory_mb).
    The PostgreSQL backend (and asyncpg) is imported only for a PostgreSQL URL."""
    if url_scheme(url) in POSTGRES_SCHEMES:
        from bot.store.images.postgres import PostgresImageIndex

        return await PostgresImageIndex.open(url)
    from bot.store.images.sqlite import DEFAULT_CACHE_BYTES, SQLiteImageIndex

    return await SQLiteImageIndex.open(url, cache_bytes=DEFAULT_CACHE_BYTES if memory_bytes is None else memory_bytes)
