"""Label-set storage, the part every backend shares: the records, the errors members and operators
see, the schema migrations, and the queries (label sets, their history, auto-classify overrides).

Scopes: (guild_id, channel_id); channel_id None is the server default set, stored as channel_id 0 because NULLs in
unique keys are awkward in SQL (Discord never issues the ID 0). Version numbers are per scope and keep increasing
across resets and undos (new version = newest history version + 1, starting at 1).

Every change writes the new state and a history row in one transaction that takes the write lock before the version
check, so read-check-write is atomic even across processes. A write that leaves the labels as they were is still
recorded as a new version: the history then shows every command a moderator ran.

The SQL sticks to what SQLite and PostgreSQL both understand (ON CONFLICT upserts, BIGINT, BOOLEAN) apart from the `?`
placeholders, which the PostgreSQL backend numbers. Each backend (sqlite.py, postgres.py) supplies only the plumbing:
connecting, the schema version, `_guard` (a connection with errors translated) and `_transaction`.

Pure stdlib: this module must not import torch, PIL or discord.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Self

log = logging.getLogger("wakeru.storage")

__all__ = [
    "ACTIONS",
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "POSTGRES_SCHEMES",
    "SCHEMA_VERSION",
    "HistoryEntry",
    "LabelSet",
    "LabelStore",
    "NothingToUndo",
    "StorageError",
    "VersionConflict",
    "url_scheme",
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


POSTGRES_SCHEMES = ("postgresql", "postgres")


def url_scheme(url: object) -> str:
    return url.partition("://")[0].lower() if isinstance(url, str) else ""


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


def _decode_set(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _decode(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else _decode_set(text)


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


class LabelStore(abc.ABC):
    """Label sets, their history and auto-classify overrides. Open one with `bot.store.open_store(url)`;
    close it with `await store.close()` (or use `async with`)."""

    _WHAT = "file"  # what storage.url points at, in messages

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.read_only = False

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> Self:
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

    @abc.abstractmethod
    async def _prepare(self) -> int:
        """Per-connection settings; returns the schema version the database is at (0 = empty)."""

    @staticmethod
    @abc.abstractmethod
    async def _user_version(db: Any) -> int:
        """The schema version recorded in the database (0 = empty)."""

    @staticmethod
    @abc.abstractmethod
    async def _set_user_version(db: Any, version: int) -> None:
        """Record the schema version, inside the migration's transaction."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection(s); safe to call more than once."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    @abc.abstractmethod
    def _guard(self) -> AbstractAsyncContextManager[Any]:
        """A connection with driver errors translated to StorageError; no transaction (single reads)."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Any]:
        """A connection inside a transaction holding the write lock, committed at the end, rolled back on any error."""

    async def _apply(
        self,
        db: Any,
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
        return LabelSet(guild_id, _channel(scope), _decode_set(labels), version, updated_by, updated_at)

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
