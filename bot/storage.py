"""Label-set storage: per-channel and server-default label sets, their history, and auto-classify overrides.

One `LabelStore` wraps one aiosqlite connection. aiosqlite runs SQLite in its own thread, so the event loop never
blocks, and an asyncio lock serialises whole transactions (a single connection would otherwise interleave the
statements of two coroutines inside one transaction).

Every change writes the new state and a history row in one `BEGIN IMMEDIATE` transaction: the write lock is taken
before the version check, so read-check-write is atomic even across processes sharing the file.

Scopes: (guild_id, channel_id); channel_id None is the server default set, stored as channel_id 0 because NULLs in
unique keys are awkward in SQL (Discord never issues the ID 0). Version numbers are per scope and keep increasing
across resets and undos (new version = newest history version + 1, starting at 1).

A write that leaves the labels as they were is still recorded as a new version: the history then shows every
command a moderator ran, and there is no special case for callers to handle.

Pure stdlib + aiosqlite: this module must not import torch, PIL or discord. bot/storage_postgres.py runs the same
queries and migrations on PostgreSQL (asyncpg), so the SQL sticks to what both understand (ON CONFLICT upserts,
BIGINT, BOOLEAN) apart from the `?` placeholders, which it numbers, and the PRAGMAs, which live in the plumbing
methods (_prepare, _user_version, _set_user_version, _guard, _transaction) that it overrides. `open_store(url)` picks
the backend from storage.url.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiosqlite

log = logging.getLogger("wakeru.storage")

__all__ = [
    "ACTIONS",
    "SCHEMA_VERSION",
    "HistoryEntry",
    "LabelSet",
    "LabelStore",
    "NothingToUndo",
    "StorageError",
    "VersionConflict",
    "open_store",
    "parse_storage_url",
]

# How long a statement waits for another process's write lock before giving up with "locked".
BUSY_TIMEOUT_MS = 5000

# Actions a caller may record with write(); "undo" rows are written by undo() only, because undo() relies on them
# never being undo targets themselves.
ACTIONS = frozenset({"set", "add", "remove", "reset", "preset"})

_SERVER_DEFAULT = 0  # channel_id stored for the server-default scope

# Migration steps, applied in order; step i (1-based) brings the schema to version i (PRAGMA user_version).
# Never edit a released step: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # The current set of each scope that has its own set; no row = falls back to the server default / config.
        """
        CREATE TABLE label_sets (
            guild_id   BIGINT NOT NULL,
            channel_id BIGINT NOT NULL,            -- 0 = server default
            labels     TEXT NOT NULL,              -- JSON array of strings
            version    BIGINT NOT NULL,
            updated_by BIGINT,
            updated_at DOUBLE PRECISION NOT NULL,  -- unix seconds
            PRIMARY KEY (guild_id, channel_id)
        )
        """,
        # One row per change; labels is the state after the change (NULL: no set of its own, after a reset).
        """
        CREATE TABLE label_history (
            guild_id   BIGINT NOT NULL,
            channel_id BIGINT NOT NULL,
            version    BIGINT NOT NULL,
            action     TEXT NOT NULL,
            labels     TEXT,
            user_id    BIGINT,
            at         DOUBLE PRECISION NOT NULL,
            detail     TEXT,
            reverted   BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (guild_id, channel_id, version)
        )
        """,
        # Per-channel auto-classify override; no row = not set (the config default applies).
        """
        CREATE TABLE channel_settings (
            guild_id      BIGINT NOT NULL,
            channel_id    BIGINT NOT NULL,
            auto_classify BOOLEAN NOT NULL,
            updated_by    BIGINT,
            updated_at    DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (guild_id, channel_id)
        )
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StorageError(Exception):
    """Database unusable (bad url, newer schema, read-only/full disk…); the message says what to do.

    The message is for the operator (it may name the file or the server). `reason` is what members
    may be told: one of REASONS, never a path, a host or a database name."""

    REASONS = ("read_only", "full", "busy", "unreachable", "broken")

    def __init__(self, message: str, *, reason: str = "broken") -> None:
        super().__init__(message)
        self.reason = reason


class VersionConflict(StorageError):
    """expected_version did not match: someone changed the set meanwhile."""

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message, reason="busy")
        self.current_version = current_version  # the version now stored (0 = no set of its own)


class NothingToUndo(StorageError):
    """undo() found no change left to revert in this scope."""


@dataclass(frozen=True, slots=True)
class LabelSet:
    guild_id: int
    channel_id: int | None  # None = the server default set
    labels: tuple[str, ...]
    version: int
    updated_by: int | None
    updated_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    version: int  # the version this change produced
    action: str  # "set" | "add" | "remove" | "reset" | "preset" | "undo"
    labels: tuple[str, ...] | None  # the set after the change; None = no set of its own (after reset)
    user_id: int | None
    at: float
    detail: str | None  # e.g. the preset name; for undo: the version it reverted
    reverted: bool  # undone by a later undo


_SUPPORTED = ("use sqlite:///relative/path.db (relative to the working directory) or sqlite:////absolute/path.db, "
              "or postgresql://user:password@host:5432/dbname")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def _scheme(url: object) -> str:
    return url.partition("://")[0].lower() if isinstance(url, str) else ""


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
    if scheme in _POSTGRES_SCHEMES:
        raise StorageError(f"storage.url {scheme}:// names a PostgreSQL database, not a SQLite file: open it with "
                           f"open_store(); {_SUPPORTED}")
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


def _scope(channel_id: int | None) -> int:
    if channel_id is None:
        return _SERVER_DEFAULT
    if channel_id == _SERVER_DEFAULT:
        raise ValueError("channel_id 0 is reserved for the server default; pass None for the server default set")
    return channel_id


def _channel(stored: int) -> int | None:
    return None if stored == _SERVER_DEFAULT else stored


def _encode(labels: tuple[str, ...]) -> str:
    return json.dumps(list(labels), ensure_ascii=False)  # readable in the file, and exact for any Unicode


def _decode(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _check_labels(labels: Iterable[str] | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if isinstance(labels, str):  # a bare string would silently become one label per character
        raise TypeError("labels must be a tuple of strings, not a single string")
    result = tuple(labels)
    for label in result:
        if not isinstance(label, str):
            raise TypeError(f"labels must be strings, got {type(label).__name__}")
    return result


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


class LabelStore:
    """Label sets, their history and auto-classify overrides in one SQLite file.

    Create with `await LabelStore.open(url)` (or `await open_store(url)`, which also opens PostgreSQL URLs); close
    with `await store.close()` (or use `async with`).
    """

    _WHAT = "file"  # what storage.url points at, in messages

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db: aiosqlite.Connection | None = db
        self._path = path
        self._lock = asyncio.Lock()
        self.read_only = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> LabelStore:
        """Create the parent directory, connect, set WAL + busy_timeout + foreign_keys, apply migrations."""
        path = parse_storage_url(url)
        if path != ":memory:":
            parent = os.path.dirname(path)
            if parent:
                try:
                    os.makedirs(parent, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create the directory {parent!r} for the database ({exc.strerror}); "
                        f"create it or point storage.url elsewhere"
                    ) from exc
        try:
            return await cls._connect(path, path)
        except StorageError:
            if path == ":memory:" or not os.path.isfile(path) or os.access(os.path.dirname(path) or ".", os.W_OK):
                raise
        # A read-only volume: SQLite cannot create the -wal/-shm files beside the database, so
        # open it as immutable. Label sets can be shown and used; every change is refused clearly.
        # Immutable ignores a -wal file, so one with committed changes in it must not be skipped.
        wal = path + "-wal"
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            raise StorageError(
                f"the database file {path!r} is on a read-only file system and its last changes are still in "
                f"{wal!r} (the bot was stopped abruptly); mount it writable once so SQLite can merge them")
        store = await cls._connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro&immutable=1", path)
        log.warning("the database %s is on a read-only file system: label sets can be used but not changed", path)
        return store

    @classmethod
    async def _connect(cls, target: str, path: str) -> LabelStore:
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
            db = await aiosqlite.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                         uri=target.startswith("file:"))
        except sqlite3.Error as exc:
            raise (_storage_error(exc, path) or StorageError(f"cannot open the database {path!r}: {exc}")) from exc
        store = cls(db, path)
        store.read_only = target.startswith("file:")
        return await store._start()

    async def _start(self) -> LabelStore:
        """Set the fresh connection up and migrate; closes the store again if that fails."""
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise
        return self

    async def _setup(self) -> None:
        current = await self._prepare()
        self._check_schema(current)
        if current < SCHEMA_VERSION:  # an up-to-date file needs no write lock: a read-only one still opens
            await self._migrate()

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

    async def _migrate(self) -> None:
        # One transaction per step; the version is re-read under the write lock, so two processes starting on a
        # fresh database at once do not both apply a step.
        while True:
            async with self._transaction() as db:
                current = await self._user_version(db)
                self._check_schema(current)
                if current >= SCHEMA_VERSION:
                    return
                for statement in MIGRATIONS[current]:
                    await db.execute(statement)
                await self._set_user_version(db, current + 1)

    @classmethod
    def _check_schema(cls, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database schema v{version} is newer than this Wakeru supports (v{SCHEMA_VERSION}); "
                f"upgrade Wakeru or point storage.url at another {cls._WHAT}"
            )

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

    async def __aenter__(self) -> LabelStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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

    async def _apply(
        self,
        db: aiosqlite.Connection,
        guild_id: int,
        scope: int,
        labels: tuple[str, ...] | None,
        *,
        user_id: int | None,
        action: str,
        detail: str | None,
    ) -> HistoryEntry:
        """Inside a transaction: store the new state of a scope and its history row; returns that row."""
        rows = await db.execute_fetchall(
            "SELECT MAX(version) FROM label_history WHERE guild_id = ? AND channel_id = ?", (guild_id, scope)
        )
        last = list(rows)[0][0]
        version = (last or 0) + 1
        now = time.time()
        encoded = None if labels is None else _encode(labels)
        await db.execute(
            "INSERT INTO label_history (guild_id, channel_id, version, action, labels, user_id, at, detail, reverted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE)",
            (guild_id, scope, version, action, encoded, user_id, now, detail),
        )
        change = HistoryEntry(version, action, labels, user_id, now, detail, reverted=False)
        if labels is None:
            await db.execute("DELETE FROM label_sets WHERE guild_id = ? AND channel_id = ?", (guild_id, scope))
            return change
        await db.execute(
            "INSERT INTO label_sets (guild_id, channel_id, labels, version, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (guild_id, channel_id) DO UPDATE SET labels = excluded.labels, version = excluded.version, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (guild_id, scope, encoded, version, user_id, now),
        )
        return change

    # ------------------------------------------------------------------ label sets

    async def get(self, guild_id: int, channel_id: int | None) -> LabelSet | None:
        """This scope's own set only (no fallback to the server default); None = no set of its own."""
        scope = _scope(channel_id)
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT labels, version, updated_by, updated_at FROM label_sets WHERE guild_id = ? AND channel_id = ?",
                (guild_id, scope),
            )
        rows = list(rows)
        if not rows:
            return None
        labels, version, updated_by, updated_at = rows[0]
        return LabelSet(guild_id, _channel(scope), _decode(labels), version, updated_by, updated_at)

    async def write(
        self,
        guild_id: int,
        channel_id: int | None,
        labels: tuple[str, ...] | None,
        *,
        user_id: int | None,
        action: str,
        detail: str | None = None,
        expected_version: int | None = None,
    ) -> HistoryEntry:
        """Replace the scope's set (labels None = reset: drop its own set so it falls back) and record the change.

        expected_version: the version the caller read (0 = it saw no set of its own); if the stored version differs,
        VersionConflict and nothing is written. None skips the check. Returns the change as recorded: the version
        this call wrote (never a later one) and the labels after it (None after a reset).
        """
        scope = _scope(channel_id)
        labels = _check_labels(labels)
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {sorted(ACTIONS)} (undo() records undos)")
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT version FROM label_sets WHERE guild_id = ? AND channel_id = ?", (guild_id, scope)
                )
            )
            current = rows[0][0] if rows else 0
            if expected_version is not None and expected_version != current:
                raise VersionConflict(
                    f"the label set was changed by someone else meanwhile (you read version {expected_version}, "
                    f"it is now version {current}); look at it again and retry",
                    current_version=current,
                )
            return await self._apply(db, guild_id, scope, labels, user_id=user_id, action=action, detail=detail)

    async def history(self, guild_id: int, channel_id: int | None, limit: int = 10) -> list[HistoryEntry]:
        """The scope's changes, newest first, at most `limit`."""
        scope = _scope(channel_id)
        if limit < 0:
            raise ValueError("limit must be 0 or more")
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT version, action, labels, user_id, at, detail, reverted FROM label_history "
                "WHERE guild_id = ? AND channel_id = ? ORDER BY version DESC LIMIT ?",
                (guild_id, scope, limit),
            )
        return [
            HistoryEntry(version, action, _decode(labels), user_id, at, detail, bool(reverted))
            for version, action, labels, user_id, at, detail, reverted in rows
        ]

    async def undo(self, guild_id: int, channel_id: int | None, *, user_id: int | None) -> HistoryEntry:
        """Revert the newest change not yet undone (undo rows themselves are never targets), as a new "undo" version.

        Restores the state just before that change (labels None = no set of its own); repeating walks further back.
        Returns the undo as recorded (its detail: the version it reverted). Raises NothingToUndo when every change
        is undone or there is no history.
        """
        scope = _scope(channel_id)
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT version FROM label_history WHERE guild_id = ? AND channel_id = ? "
                    "AND action <> 'undo' AND NOT reverted ORDER BY version DESC LIMIT 1",
                    (guild_id, scope),
                )
            )
            if not rows:
                raise NothingToUndo("there is nothing left to undo for this label set")
            target = rows[0][0]
            # The row just before the target holds the state the target started from (whatever its action).
            before = list(
                await db.execute_fetchall(
                    "SELECT labels FROM label_history WHERE guild_id = ? AND channel_id = ? AND version < ? "
                    "ORDER BY version DESC LIMIT 1",
                    (guild_id, scope, target),
                )
            )
            labels = _decode(before[0][0]) if before else None
            await db.execute(
                "UPDATE label_history SET reverted = TRUE WHERE guild_id = ? AND channel_id = ? AND version = ?",
                (guild_id, scope, target),
            )
            return await self._apply(db, guild_id, scope, labels, user_id=user_id, action="undo", detail=str(target))

    # ------------------------------------------------------------------ auto-classify override

    async def get_auto(self, guild_id: int, channel_id: int | None) -> bool | None:
        """The scope's auto-classify override; None = not set (use the configured default)."""
        scope = _scope(channel_id)
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT auto_classify FROM channel_settings WHERE guild_id = ? AND channel_id = ?",
                    (guild_id, scope),
                )
            )
        return bool(rows[0][0]) if rows else None

    async def set_auto(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        """Set the override (True/False) or clear it (None)."""
        scope = _scope(channel_id)
        async with self._transaction() as db:
            if enabled is None:
                await db.execute(
                    "DELETE FROM channel_settings WHERE guild_id = ? AND channel_id = ?", (guild_id, scope)
                )
                return
            await db.execute(
                "INSERT INTO channel_settings (guild_id, channel_id, auto_classify, updated_by, updated_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (guild_id, channel_id) DO UPDATE SET auto_classify = excluded.auto_classify, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (guild_id, scope, bool(enabled), user_id, time.time()),
            )


async def open_store(url: str) -> LabelStore:
    """Open the label store storage.url names: SQLite for sqlite:///…, PostgreSQL for postgresql:// or postgres://.

    The PostgreSQL backend (and asyncpg) is only imported when a PostgreSQL URL is used.
    """
    if _scheme(url) in _POSTGRES_SCHEMES:
        from .storage_postgres import PostgresLabelStore

        return await PostgresLabelStore.open(url)
    return await LabelStore.open(url)
