"""Where label sets (and answer styles, their history, members' corrections) live: `open_store(storage.url)` picks
the backend.

base.py holds what every backend shares (records, errors, migrations, queries); sqlite.py and postgres.py hold
only the plumbing of their database.
"""

from __future__ import annotations

from bot.store.base import (
    ACTIONS,
    POSTGRES_SCHEMES,
    SCHEMA_VERSION,
    STYLES,
    Correction,
    HistoryEntry,
    LabelSet,
    LabelStore,
    NothingToUndo,
    StorageError,
    VersionConflict,
    url_scheme,
)
from bot.store.sqlite import SQLiteLabelStore, parse_storage_url

__all__ = [
    "ACTIONS",
    "SCHEMA_VERSION",
    "STYLES",
    "Correction",
    "HistoryEntry",
    "LabelSet",
    "LabelStore",
    "NothingToUndo",
    "SQLiteLabelStore",
    "StorageError",
    "VersionConflict",
    "open_store",
    "parse_storage_url",
]


async def open_store(url: str) -> LabelStore:
    """Open the label store storage.url names: SQLite for sqlite:///…, PostgreSQL for postgresql:// or postgres://.

    The PostgreSQL backend (and asyncpg) is only imported when a PostgreSQL URL is used.
    """
    if url_scheme(url) in POSTGRES_SCHEMES:
        from bot.store.postgres import PostgresLabelStore

        return await PostgresLabelStore.open(url)
    return await SQLiteLabelStore.open(url)
