"""The SQLite backend (the default): one file, one aiosqlite connection.

aiosqlite runs SQLite in its own thread, so the event loop never blocks, and an asyncio lock serialises whole
transactions (a single connection would otherwise interleave the statements of two coroutines inside one
transaction). Writes run in `BEGIN IMMEDIATE`, which takes the write lock before anything is read. The file is in WAL
mode (readers never block the writer); on a read-only volume it is opened immutable and every change is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite

from bot.store.base import BUSY_TIMEOUT_MS, POSTGRES_SCHEMES, LabelStore, StorageError

log = logging.getLogger("wakeru.storage")


_SUPPORTED = (
    "use sqlite:///relative/path.db (relative to the working directory) or sqlite:////absolute/path.db, "
    "or postgresql://user:password@host:5432/dbname"
)


def parse_storage_url(url: str) -> str:
    """storage.url → SQLite path: "sqlite:///data/wakeru.db" → "data/wakeru.db", "sqlite:////abs/x.db" → "/abs/x.db",
    "sqlite:///:memory:" → ":memory:". Anything else raises StorageError naming the supported forms; PostgreSQL URLs
    too, as they are no SQLite path: open_store() opens those.

    Error messages name only the scheme, never the whole URL: a database URL may carry a password.
    """
    if not isinstance(url, str):
        raise StorageError(f"storage.url must be text; {_SUPPORTED}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise StorageError(f"storage.url is not a URL; {_SUPPORTED}")
    if scheme in POSTGRES_SCHEMES:
        raise StorageError(
            f"storage.url {scheme}:// names a PostgreSQL database, not a SQLite file: open it with "
            f"open_store(); {_SUPPORTED}"
        )
    if scheme.startswith("postgresql+"):
        raise StorageError(f"storage.url scheme {scheme!r} is not supported: write postgresql:// instead; {_SUPPORTED}")
    if scheme != "sqlite":
        raise StorageError(f"storage.url scheme {scheme!r} is not supported; {_SUPPORTED}")
    if not rest.startswith("/"):
        # sqlite://host/x.db: a host makes no sense for a local file.
        raise StorageError(f"storage.url sqlite:// must be followed by a third slash and a path; {_SUPPORTED}")
    path = rest[1:]
    if not path:
        raise StorageError(f"storage.url has no file path; {_SUPPORTED}")
    return path


def database_path(url: str) -> str:
    """storage.url → the SQLite path, its parent directory created (StorageError saying why when it cannot be)."""
    path = parse_storage_url(url)
    parent = os.path.dirname(path) if path != ":memory:" else ""
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the directory {parent!r} for the database ({exc.strerror}); "
                f"create it or point storage.url elsewhere"
            ) from exc
    return path


def on_read_only_volume(path: str) -> bool:
    """An existing database file whose directory cannot be written: SQLite cannot create -wal/-shm beside it."""
    return path != ":memory:" and os.path.isfile(path) and not os.access(os.path.dirname(path) or ".", os.W_OK)


def immutable_target(path: str) -> str:
    """The URI that opens a database on a read-only volume as immutable. Immutable ignores a -wal file, so one
    with committed changes in it must not be skipped: StorageError then."""
    wal = path + "-wal"
    if os.path.isfile(wal) and os.path.getsize(wal) > 0:
        raise StorageError(
            f"the database file {path!r} is on a read-only file system and its last changes are still in "
            f"{wal!r} (the bot was stopped abruptly); mount it writable once so SQLite can merge them",
            reason="read_only",
        )
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro&immutable=1"


def _storage_error(exc: sqlite3.Error, path: str) -> StorageError | None:
    """Translate the SQLite errors an operator can fix into StorageError; None = a bug, re-raise as is."""
    name = getattr(exc, "sqlite_errorname", "") or ""  # Python 3.11+; the message is the fallback
    msg = str(exc).lower()
    where = "the in-memory database" if path == ":memory:" else f"the database file {path!r}"
    if "readonly" in msg or "read-only" in msg or name.startswith("SQLITE_READONLY"):
        return StorageError(
            f"{where} is read-only: give the bot's user write access to the file and its directory "
            f"(SQLite also writes -wal and -shm files next to it), or point storage.url at a writable file",
            reason="read_only",
        )
    if "disk is full" in msg or name == "SQLITE_FULL":
        return StorageError(f"cannot write {where}: the disk is full; free some space and retry", reason="full")
    if "locked" in msg or name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StorageError(
            f"{where} stayed locked by another process for more than {BUSY_TIMEOUT_MS / 1000:g} s; "
            f"retry, and check that no other program holds it open in a long transaction",
            reason="busy",
        )
    if "unable to open" in msg or name.startswith("SQLITE_CANTOPEN"):
        return StorageError(
            f"cannot open {where}: check that its directory exists and is readable and writable by the bot's user, "
            f"and that the path is not a directory",
            reason="unreachable",
        )
    if "not a database" in msg or "malformed" in msg or name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return StorageError(f"{where} is not a usable SQLite database ({exc}); point storage.url at another file")
    if "disk i/o error" in msg or name.startswith("SQLITE_IOERR"):
        return StorageError(f"disk I/O error on {where}; check the disk and the file's permissions")
    return None


class SQLiteLabelStore(LabelStore):
    """The label store in one SQLite file. Create with `await SQLiteLabelStore.open(url)` (or `bot.store.open_store`)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        super().__init__()
        self._db: aiosqlite.Connection | None = db
        self._path = path

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> SQLiteLabelStore:
        """Create the parent directory, connect, set WAL + busy_timeout + foreign_keys, apply migrations."""
        path = database_path(url)
        try:
            return await cls._connect(path, path)
        except StorageError:
            if not on_read_only_volume(path):
                raise
        # A read-only volume: open it as immutable. Label sets can be shown and used; every change is refused clearly.
        store = await cls._connect(immutable_target(path), path)
        log.warning("the database %s is on a read-only file system: label sets can be used but not changed", path)
        return store

    @classmethod
    async def _connect(cls, target: str, path: str) -> SQLiteLabelStore:
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
            db = await aiosqlite.connect(
                target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, uri=target.startswith("file:")
            )
        except sqlite3.Error as exc:
            raise (_storage_error(exc, path) or StorageError(f"cannot open the database {path!r}: {exc}")) from exc
        store = cls(db, path)
        store.read_only = target.startswith("file:")
        return await store._start()

    async def _prepare(self) -> int:
        """Per-connection settings; returns the schema version the database is at (0 = empty)."""
        async with self._guard() as db:
            # busy_timeout first, so the following statements wait for another process instead of failing.
            await db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            await db.execute("PRAGMA foreign_keys = ON")
            # WAL: readers never block the writer, and the bot reads far more often than it writes.
            # (":memory:" answers "memory"; that is fine.)
            if not self.read_only:
                await self._enable_wal(db)
            # Also reads the file header: a file that is not a database fails here, not later.
            return await self._user_version(db)

    @staticmethod
    async def _enable_wal(db: aiosqlite.Connection) -> None:
        """Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "locked" at once
        (no busy wait) when another process is opening the same fresh file: retry for a while."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                await db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    @staticmethod
    async def _user_version(db: aiosqlite.Connection) -> int:
        rows = await db.execute_fetchall("PRAGMA user_version")
        return int(list(rows)[0][0])

    @staticmethod
    async def _set_user_version(db: aiosqlite.Connection, version: int) -> None:
        await db.execute(f"PRAGMA user_version = {int(version)}")  # transactional: lives in the file header

    async def close(self) -> None:
        """Close the connection; safe to call more than once."""
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the lock and translate SQLite errors; no transaction (single reads, pragmas)."""
        async with self._lock:
            if self._db is None:
                raise StorageError("the label store is closed", reason="unreachable")
            try:
                yield self._db
            except sqlite3.Error as exc:
                mapped = _storage_error(exc, self._path)
                if mapped is None:
                    raise
                raise mapped from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error so nothing is half-applied."""
        async with self._guard() as db:
            # IMMEDIATE takes the write lock now, so what we read inside cannot change before we write.
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some errors (disk full, I/O): only roll back what is still open.
                if db.in_transaction:
                    try:
                        await db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the useful one
                raise
