"""Label-set storage, the part every backend shares: the records, the errors members and operators
see, the schema migrations, and the queries (label sets, answer styles, their history, auto-classify overrides,
members' corrections).

Tables (schema v2):
- label_sets: the current label set of each scope that has its own (version = the version that last wrote it).
- channel_styles: the answer style (STYLES) of each scope that has its own.
- label_history: one row per change of a scope, of either kind: 'labels' (labels = the set after it, NULL = none of
  its own) or 'style' (style = the style after it, NULL = none of its own). undo() reverts either kind.
- channel_settings: per-scope auto-classify overrides.
- corrections: one member's answer to one classified image ("it is X" / "none of these"), keyed by (attachment,
  member); a member answering again replaces the earlier answer.

Scopes: (guild_id, channel_id); channel_id None is the server default, stored as channel_id 0 because NULLs in
unique keys are awkward in SQL (Discord never issues the ID 0). Version numbers are per scope, shared by label and
style changes (the scope's history is one sequence), and keep increasing across resets and undos (new version =
newest history version + 1, starting at 1). label_sets.version, which write()'s expected_version is checked against,
moves only with label changes: a style change never makes a label edit conflict.

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
from collections.abc import Collection, Iterable, Sequence
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
    "STYLES",
    "Correction",
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
# never being undo targets themselves. Style changes are recorded by write_style() with the action "style".
ACTIONS = frozenset({"set", "add", "remove", "reset", "preset"})

# How a channel's answers are given (write_style); a scope without its own style falls back like its labels do.
STYLES = ("embed", "reaction", "tags", "none")

# Ids per IN (…) list: SQLite builds before 3.32 allow 999 variables per statement, and a query may hold two lists.
_CHUNK = 400

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
    (
        # v2: answer styles, their history in label_history, and members' corrections.
        # kind 'labels': labels is the set after the change; kind 'style': style is the style after it (NULL: none
        # of its own) and labels is NULL. Rows written before v2 are label changes.
        "ALTER TABLE label_history ADD COLUMN kind TEXT NOT NULL DEFAULT 'labels'",
        "ALTER TABLE label_history ADD COLUMN style TEXT",
        # The answer style of each scope that has its own; no row = falls back to the server default / config.
        """
        CREATE TABLE channel_styles (
            guild_id   BIGINT NOT NULL,
            channel_id BIGINT NOT NULL,            -- 0 = server default
            style      TEXT NOT NULL,              -- one of STYLES
            updated_by BIGINT,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (guild_id, channel_id)
        )
        """,
        # One member's answer to one image: chosen NULL = "none of these"; labels = JSON array, the channel's set
        # (names) the member chose from; shown = the top label the answer showed. channel_id is where the message is (a thread
        # too); parent_id the thread's channel or forum (NULL outside threads).
        """
        CREATE TABLE corrections (
            guild_id      BIGINT NOT NULL,
            channel_id    BIGINT NOT NULL,
            parent_id     BIGINT,
            message_id    BIGINT NOT NULL,
            attachment_id BIGINT NOT NULL,
            user_id       BIGINT NOT NULL,
            shown         TEXT NOT NULL,
            chosen        TEXT,
            labels        TEXT NOT NULL,
            at            DOUBLE PRECISION NOT NULL,  -- unix seconds
            PRIMARY KEY (attachment_id, user_id)
        )
        """,
        "CREATE INDEX corrections_channel ON corrections (guild_id, channel_id)",
        "CREATE INDEX corrections_message ON corrections (message_id)",
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
    action: str  # "set" | "add" | "remove" | "reset" | "preset" | "undo" | "style"
    labels: tuple[str, ...] | None  # kind "labels": the set after the change; None = no set of its own (after reset)
    user_id: int | None
    at: float
    detail: str | None  # e.g. the preset name; for undo: the version it reverted
    reverted: bool  # undone by a later undo
    kind: str = "labels"  # "labels" | "style": what the change changed
    style: str | None = None  # kind "style": the style after the change; None = no style of its own


@dataclass(frozen=True, slots=True)
class Correction:
    """A member's answer to one classified image: which label it really is."""

    guild_id: int
    channel_id: int  # where the message is (a thread's own id in a thread)
    parent_id: int | None  # a thread's channel or forum; None outside threads
    message_id: int
    attachment_id: int
    user_id: int  # the member who answered
    shown: str  # the top label the answer showed
    chosen: str | None  # the label the member chose; None = "none of these"
    labels: tuple[str, ...]  # the channel's set (names) the member chose from
    at: float  # unix seconds


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


def _check_style(style: str | None) -> str | None:
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {list(STYLES)} (None drops the scope's own style)")
    return style


def guild_channels(rows: Iterable[Sequence[Any]]) -> dict[int, set[int]]:
    """(guild_id, channel_id) rows as guild → channels, for the start-up check of deletions (bot.services.reconcile);
    channel 0 (a server-wide scope) only makes the guild appear. The image index's places() uses it too."""
    found: dict[int, set[int]] = {}
    for guild_id, channel_id in rows:
        channels = found.setdefault(int(guild_id), set())
        if channel_id:
            channels.add(int(channel_id))
    return found


def _chunks(ids: Collection[int]) -> list[list[int]]:
    """Distinct ids in lists short enough for one IN (…) each; [] for no ids."""
    unique = sorted(set(ids))
    return [unique[i : i + _CHUNK] for i in range(0, len(unique), _CHUNK)]


def _marks(ids: Sequence[object]) -> str:
    return ", ".join("?" * len(ids))


_CORRECTION_COLUMNS = "guild_id, channel_id, parent_id, message_id, attachment_id, user_id, shown, chosen, labels, at"


def _correction(row: Sequence[Any]) -> Correction:
    guild_id, channel_id, parent_id, message_id, attachment_id, user_id, shown, chosen, labels, at = row
    return Correction(
        guild_id, channel_id, parent_id, message_id, attachment_id, user_id, shown, chosen, _decode_set(labels), at
    )


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
    """Label sets, answer styles, their history, auto-classify overrides and members' corrections. Open one with `bot.store.open_store(url)`;
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

    @staticmethod
    async def _next_version(db: Any, guild_id: int, scope: int) -> int:
        """Inside a transaction: the scope's next version (label and style changes share one sequence)."""
        rows = await db.execute_fetchall(
            "SELECT MAX(version) FROM label_history WHERE guild_id = ? AND channel_id = ?", (guild_id, scope)
        )
        last = list(rows)[0][0]
        return int(last or 0) + 1

    async def _record(
        self,
        db: Any,
        guild_id: int,
        scope: int,
        *,
        kind: str,
        labels: tuple[str, ...] | None,
        style: str | None,
        user_id: int | None,
        action: str,
        detail: str | None,
    ) -> HistoryEntry:
        """Inside a transaction: the history row of a change of either kind (the scope's next version)."""
        version = await self._next_version(db, guild_id, scope)
        now = time.time()
        encoded = None if labels is None else _encode(labels)
        await db.execute(
            "INSERT INTO label_history (guild_id, channel_id, version, action, labels, user_id, at, detail, reverted, "
            "kind, style) VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE, ?, ?)",
            (guild_id, scope, version, action, encoded, user_id, now, detail, kind, style),
        )
        return HistoryEntry(version, action, labels, user_id, now, detail, reverted=False, kind=kind, style=style)

    async def _apply_style(
        self,
        db: Any,
        guild_id: int,
        scope: int,
        style: str | None,
        *,
        user_id: int | None,
        action: str,
        detail: str | None,
    ) -> HistoryEntry:
        """Inside a transaction: store the new style of a scope (None: drop its own) and its history row."""
        change = await self._record(
            db, guild_id, scope, kind="style", labels=None, style=style, user_id=user_id, action=action, detail=detail
        )
        if style is None:
            await db.execute("DELETE FROM channel_styles WHERE guild_id = ? AND channel_id = ?", (guild_id, scope))
        else:
            await db.execute(
                "INSERT INTO channel_styles (guild_id, channel_id, style, updated_by, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (guild_id, channel_id) DO UPDATE SET style = excluded.style, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (guild_id, scope, style, user_id, change.at),
            )
        return change

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
        """Inside a transaction: store the new labels of a scope and its history row; returns that row."""
        change = await self._record(
            db, guild_id, scope, kind="labels", labels=labels, style=None, user_id=user_id, action=action, detail=detail
        )
        if labels is None:
            await db.execute("DELETE FROM label_sets WHERE guild_id = ? AND channel_id = ?", (guild_id, scope))
            return change
        await db.execute(
            "INSERT INTO label_sets (guild_id, channel_id, labels, version, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (guild_id, channel_id) DO UPDATE SET labels = excluded.labels, version = excluded.version, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (guild_id, scope, _encode(labels), change.version, user_id, change.at),
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
        """The scope's changes of both kinds (label sets and styles: see HistoryEntry.kind), newest first, at most
        `limit`."""
        scope = _scope(channel_id)
        if limit < 0:
            raise ValueError("limit must be 0 or more")
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT version, action, labels, user_id, at, detail, reverted, kind, style FROM label_history "
                "WHERE guild_id = ? AND channel_id = ? ORDER BY version DESC LIMIT ?",
                (guild_id, scope, limit),
            )
        return [
            HistoryEntry(version, action, _decode(labels), user_id, at, detail, bool(reverted), kind, style)
            for version, action, labels, user_id, at, detail, reverted, kind, style in rows
        ]

    async def undo(self, guild_id: int, channel_id: int | None, *, user_id: int | None) -> HistoryEntry:
        """Revert the newest change not yet undone, of either kind (undo rows themselves are never targets), as a new
        "undo" version of the same kind.

        A label change: restores the labels of the latest earlier label row (None = no set of its own). A style
        change: restores the style of the latest earlier style row (None = no style of its own). Repeating walks
        further back across both kinds. Returns the undo as recorded (its detail: the version it reverted). Raises
        NothingToUndo when every change is undone or there is no history.
        """
        scope = _scope(channel_id)
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT version, kind FROM label_history WHERE guild_id = ? AND channel_id = ? "
                    "AND action <> 'undo' AND NOT reverted ORDER BY version DESC LIMIT 1",
                    (guild_id, scope),
                )
            )
            if not rows:
                raise NothingToUndo("there is nothing left to undo for this label set")
            target, kind = rows[0][0], rows[0][1]
            # The latest earlier row of the same kind holds the state the target started from (whatever its action:
            # an undo row holds the state it restored).
            before = list(
                await db.execute_fetchall(
                    "SELECT labels, style FROM label_history WHERE guild_id = ? AND channel_id = ? AND version < ? "
                    "AND kind = ? ORDER BY version DESC LIMIT 1",
                    (guild_id, scope, target, kind),
                )
            )
            await db.execute(
                "UPDATE label_history SET reverted = TRUE WHERE guild_id = ? AND channel_id = ? AND version = ?",
                (guild_id, scope, target),
            )
            if kind == "style":
                style = before[0][1] if before else None
                return await self._apply_style(
                    db, guild_id, scope, style, user_id=user_id, action="undo", detail=str(target)
                )
            labels = _decode(before[0][0]) if before else None
            return await self._apply(db, guild_id, scope, labels, user_id=user_id, action="undo", detail=str(target))

    # ------------------------------------------------------------------ answer styles

    async def get_style(self, guild_id: int, channel_id: int | None) -> str | None:
        """This scope's own answer style (one of STYLES); None = not set (no fallback to the server default)."""
        scope = _scope(channel_id)
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT style FROM channel_styles WHERE guild_id = ? AND channel_id = ?", (guild_id, scope)
                )
            )
        return str(rows[0][0]) if rows else None

    async def write_style(
        self, guild_id: int, channel_id: int | None, style: str | None, *, user_id: int | None
    ) -> HistoryEntry:
        """Set the scope's answer style (one of STYLES; None drops its own so it falls back) and record the change
        (kind "style", action "style"). The version comes from the scope's history, shared with label changes; the
        label set's own version (write()'s expected_version) does not move. Returns the change as recorded.
        """
        scope = _scope(channel_id)
        style = _check_style(style)
        async with self._transaction() as db:
            return await self._apply_style(db, guild_id, scope, style, user_id=user_id, action="style", detail=None)

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

    # ------------------------------------------------------------------ corrections

    async def record_correction(self, correction: Correction) -> bool:
        """Store a member's answer for an image. True when it is new; False when it replaced the same member's
        earlier answer for that image (attachment_id, user_id)."""
        c = correction
        labels = _check_labels(c.labels)
        if labels is None:
            raise TypeError("a correction's labels must be a tuple of strings, not None")
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT 1 FROM corrections WHERE attachment_id = ? AND user_id = ?", (c.attachment_id, c.user_id)
                )
            )
            await db.execute(
                f"INSERT INTO corrections ({_CORRECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (attachment_id, user_id) DO UPDATE SET guild_id = excluded.guild_id, "
                "channel_id = excluded.channel_id, parent_id = excluded.parent_id, message_id = excluded.message_id, "
                "shown = excluded.shown, chosen = excluded.chosen, labels = excluded.labels, at = excluded.at",
                (
                    c.guild_id,
                    c.channel_id,
                    c.parent_id,
                    c.message_id,
                    c.attachment_id,
                    c.user_id,
                    c.shown,
                    c.chosen,
                    _encode(labels),
                    float(c.at),
                ),
            )
        return not rows

    async def get_correction(self, attachment_id: int, user_id: int) -> Correction | None:
        """This member's answer for this image; None = none."""
        async with self._guard() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {_CORRECTION_COLUMNS} FROM corrections WHERE attachment_id = ? AND user_id = ?",
                    (attachment_id, user_id),
                )
            )
        return _correction(rows[0]) if rows else None

    async def corrections(
        self, guild_id: int, *, channel_ids: Collection[int] | None = None, since: float | None = None
    ) -> list[Correction]:
        """The guild's corrections, oldest first. channel_ids: only those in these channels or in their threads
        (channel_id or parent_id among them; an empty collection matches nothing); since: only those at or after
        this time (unix seconds)."""
        where = "guild_id = ?"
        params: list[Any] = [guild_id]
        if since is not None:
            where += " AND at >= ?"
            params.append(float(since))
        if channel_ids is None:
            chunks: list[list[int] | None] = [None]
        else:
            chunks = list(_chunks(channel_ids))
        found: dict[tuple[int, int], Correction] = {}
        async with self._guard() as db:
            for chunk in chunks:
                sql, args = f"SELECT {_CORRECTION_COLUMNS} FROM corrections WHERE {where}", list(params)
                if chunk is not None:
                    sql += f" AND (channel_id IN ({_marks(chunk)}) OR parent_id IN ({_marks(chunk)}))"
                    args += chunk + chunk
                for row in await db.execute_fetchall(sql, args):
                    correction = _correction(row)
                    found[correction.attachment_id, correction.user_id] = correction
        return sorted(found.values(), key=lambda c: (c.at, c.attachment_id, c.user_id))

    async def keep_correction_attachments(self, message_id: int, kept: Collection[int]) -> int:
        """After an edit: delete the corrections of the message's images that are no longer on it; returns how many."""
        kept = sorted(set(kept))
        condition = "message_id = ?" + (f" AND attachment_id NOT IN ({_marks(kept)})" if kept else "")
        args: list[Any] = [message_id, *kept]
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall(f"SELECT COUNT(*) FROM corrections WHERE {condition}", args))
            await db.execute(f"DELETE FROM corrections WHERE {condition}", args)
        return int(rows[0][0])

    async def forget_corrections(
        self,
        guild_id: int,
        *,
        message_ids: Collection[int] | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
    ) -> int:
        """Delete corrections; returns how many. message_ids: those of these messages; channel_id: those of a channel
        and of its threads; user_id: those of one member. Given together, a row must match each (e.g. one member's
        in one channel); with none of them: all of the guild's."""
        where = "guild_id = ?"
        params: list[Any] = [guild_id]
        if channel_id is not None:
            where += " AND (channel_id = ? OR parent_id = ?)"
            params += [channel_id, channel_id]
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        if message_ids is None:
            chunks: list[list[int] | None] = [None]
        else:
            chunks = list(_chunks(message_ids))
        deleted = 0
        async with self._transaction() as db:
            for chunk in chunks:
                condition, args = where, list(params)
                if chunk is not None:
                    condition += f" AND message_id IN ({_marks(chunk)})"
                    args += chunk
                # Counted before deleting, under the write lock: the same number on both backends without RETURNING.
                rows = list(await db.execute_fetchall(f"SELECT COUNT(*) FROM corrections WHERE {condition}", args))
                deleted += int(rows[0][0])
                await db.execute(f"DELETE FROM corrections WHERE {condition}", args)
        return deleted

    async def correction_places(self) -> dict[int, set[int]]:
        """Every guild with corrections, with the top-level channels they were made in (a thread's under its
        parent): what the start-up check compares with what still exists on Discord."""
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT DISTINCT guild_id, COALESCE(parent_id, channel_id) FROM corrections"
            )
        return guild_channels(rows)
