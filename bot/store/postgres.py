"""PostgreSQL label store: bot.store.base.LabelStore's queries, schema and migrations on a PostgreSQL server.

Selected by storage.url postgresql://user:password@host:5432/dbname (or postgres://…) through
bot.store.open_store(). Several bot processes may share one database.

Only the plumbing differs from SQLite; every query method (label sets, styles, history, undo, auto-classify
overrides, corrections) and the migration loop are LabelStore's own, run through `_Connection`, which gives an asyncpg
connection the two aiosqlite calls they use and numbers their `?` placeholders ($1, $2, …).

- An asyncpg pool (1-5 connections): reads run side by side, no lock.
- Every write transaction (and every migration step) first takes the transaction-scoped advisory lock WRITE_LOCK,
  so writers in all processes are serialised and write()'s version check is atomic, as BEGIN IMMEDIATE makes it
  on SQLite. Label and style changes are rare moderator commands and a correction is one short upsert: one lock
  per database is plenty. Waiting for it longer than bot.BUSY_TIMEOUT_MS (lock_timeout) is a StorageError, as
  SQLite's busy timeout is.
- PostgreSQL has no PRAGMA user_version: the schema version lives in the one-row table wakeru_schema, read and
  written inside the locked migration transactions, so two processes starting on an empty database at once
  migrate it once.
- Errors an operator can fix (server unreachable, login refused, no such database, read-only server, full disk,
  connection lost) become StorageError naming the database, host and port, never the URL's password. Anything
  else is a bug and propagates unchanged.
- open() keeps retrying an unreachable server for CONNECT_RETRY_S, so a bot started together with its database
  (docker compose) does not give up on the first refused connection.

Like bot.store.base, this module must not import torch, PIL or discord.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from bot.store.base import BUSY_TIMEOUT_MS, LabelStore, StorageError

log = logging.getLogger("wakeru.storage")

__all__ = ["CONNECT_RETRY_S", "SCHEMA_TABLE", "WRITE_LOCK", "PostgresLabelStore"]

CONNECT_RETRY_S = 10.0  # open(): how long to keep retrying a server that cannot be reached (yet)
CONNECT_TIMEOUT_S = 5.0  # one connection attempt
COMMAND_TIMEOUT_S = 30.0  # one statement (a server that stopped answering)
CLOSE_TIMEOUT_S = 5.0
POOL_MIN, POOL_MAX = 1, 5
WRITE_LOCK = 0x5741_4B45_5255  # pg_advisory_xact_lock key taken by every write transaction ("WAKERU")
SCHEMA_TABLE = "wakeru_schema"  # one row: the schema version (SQLite keeps it in PRAGMA user_version)

_FORM = "use postgresql://user:password@host:5432/dbname"


@dataclass(frozen=True)
class _Server:
    """What storage.url names, for connecting (dsn) and for messages (everything but the password)."""

    dsn: str
    host: str
    port: int
    database: str
    user: str
    password: str

    @classmethod
    def parse(cls, url: str) -> _Server:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise StorageError(f"storage.url is not a valid PostgreSQL URL (check the port); {_FORM}") from None
        query = dict(urllib.parse.parse_qsl(parts.query))
        user = urllib.parse.unquote(parts.username or "") or query.get("user", "")
        database = urllib.parse.unquote(parts.path.lstrip("/")) or query.get("dbname", query.get("database", user))
        query_port = query.get("port", "")
        return cls(
            dsn=url,
            host=parts.hostname or query.get("host", "localhost"),
            port=port or (int(query_port) if query_port.isdigit() else 5432),
            database=database or "(the default database)",
            user=user or "(the default user)",
            password=urllib.parse.unquote(parts.password or "") or query.get("password", ""),
        )

    @property
    def where(self) -> str:
        return f"the PostgreSQL database {self.database!r} on {self.host}:{self.port}"

    def redact(self, text: str) -> str:
        """Belt and braces: no message ever repeats the password, however a driver error worded it."""
        for secret in {self.password, urllib.parse.quote(self.password, safe="")} - {""}:
            text = text.replace(secret, "***")
        return text


_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)  # OSError covers TimeoutError too
# open() retries these: the server may still be starting, or its host not resolvable yet (docker compose).
_TRANSIENT = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.PostgresConnectionError)


def _reason(exc: BaseException) -> str:
    """What members may be told about a driver error (StorageError.reason)."""
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return "read_only"
    if isinstance(exc, asyncpg.DiskFullError):
        return "full"
    if isinstance(exc, (asyncpg.LockNotAvailableError, asyncpg.TooManyConnectionsError)):
        return "busy"
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.CannotConnectNowError,
            asyncpg.PostgresConnectionError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.InterfaceError,
        ),
    ):
        return "unreachable"
    return "broken"


def _describe(exc: BaseException, server: _Server) -> str | None:
    """The operator's view of a driver error; None = not an operator's problem (a bug): let it propagate."""
    where = server.where
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"{where} refused the password of user {server.user!r}: check the user name and password in storage.url"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # no such role, no pg_hba.conf entry
        return f"{where} refused the login ({exc}): check the user in storage.url and the server's pg_hba.conf"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"{where} does not exist: create it (createdb -O {server.user} {server.database}) or fix the "
            f"database name in storage.url"
        )
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return (
            f"{where} is read-only (a hot standby, or default_transaction_read_only is on): label sets can be "
            f"used but not changed; point storage.url at the primary server or turn read-only off"
        )
    if isinstance(exc, asyncpg.DiskFullError):
        return f"cannot write {where}: the server's disk is full; free some space and retry"
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return (
            f"{where} stayed locked by another bot process for more than {BUSY_TIMEOUT_MS / 1000:g} s; "
            f"retry, and check that no other program holds a long transaction open"
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return (
            f"user {server.user!r} lacks a permission in {where} ({exc}): grant it, or connect as the owner of "
            f"the label tables"
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return f"{where} has no free connection slot ({exc}); retry later, or raise the server's max_connections"
    if isinstance(exc, asyncpg.CannotConnectNowError):  # starting up, shutting down, in recovery
        return f"{where} does not accept connections right now ({exc}); retry in a moment"
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"storage.url does not configure a usable connection ({exc}); {_FORM}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time; check the server and the network, then retry"
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and not isinstance(exc, ConnectionError)):
        return (
            f"cannot reach {where} ({exc.strerror or exc}): check that the server is running and that "
            f"storage.url names the right host and port"
        )
    if isinstance(
        exc, (ConnectionError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)
    ) or (isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc) and "closed" in str(exc)):
        return f"lost the connection to {where} (the server restarted, or the network failed); retry"
    return None


def _translate(exc: BaseException, server: _Server) -> StorageError | None:
    message = _describe(exc, server)
    return None if message is None else StorageError(server.redact(message), reason=_reason(exc))


_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?")  # a string literal (kept as is) or a ? placeholder


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """LabelStore's SQL with ? placeholders → PostgreSQL's $1, $2, … (never inside a string literal)."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda m: f"${next(counter)}" if m.group() == "?" else m.group(), sql)


class _Connection:
    """An asyncpg connection with the aiosqlite calls LabelStore's query methods make."""

    def __init__(self, con: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self.con = con

    @property
    def in_transaction(self) -> bool:
        return bool(self.con.is_in_transaction())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.con.execute(_numbered(sql), *params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.con.fetch(_numbered(sql), *params)
        return rows


class PostgresLabelStore(LabelStore):
    """LabelStore on a PostgreSQL database. Create with `await PostgresLabelStore.open(url)` or open_store(url)."""

    _WHAT = "database"

    def __init__(self, pool: asyncpg.Pool, server: _Server) -> None:
        super().__init__()
        self._pool: asyncpg.Pool | None = pool
        self._server = server

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str) -> PostgresLabelStore:
        """Connect (retrying an unreachable server for up to CONNECT_RETRY_S), then apply migrations."""
        server = _Server.parse(url)
        store = cls(await cls._pool_for(server), server)
        return await store._start()

    @staticmethod
    async def _pool_for(server: _Server) -> asyncpg.Pool:
        started = time.monotonic()
        delay = 0.1
        while True:
            try:
                return await asyncpg.create_pool(
                    server.dsn,
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    server_settings={"application_name": "wakeru", "lock_timeout": f"{int(BUSY_TIMEOUT_MS)}ms"},
                )
            except ValueError as exc:  # asyncpg could not parse the URL; its words, without the password
                raise StorageError(
                    server.redact(f"storage.url is not a valid PostgreSQL URL ({exc}); {_FORM}")
                ) from None
            except _ERRORS as exc:
                error = _translate(exc, server)
                if error is None:
                    raise
                waited = time.monotonic() - started
                if not isinstance(exc, _TRANSIENT) or waited + delay > CONNECT_RETRY_S:
                    if waited > 0.5:
                        error = StorageError(f"{error} (kept trying for {waited:.0f} s)", reason=error.reason)
                    raise error from exc
                if delay == 0.1:
                    log.warning(
                        "%s; retrying for up to %g s (the server may still be starting)", error, CONNECT_RETRY_S
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _prepare(self) -> int:
        async with self._guard() as db:
            rows = await db.execute_fetchall(
                "SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()"
            )
            self.read_only = bool(rows[0][0])
            return await self._user_version(db)

    @staticmethod
    async def _user_version(db: _Connection) -> int:
        # A query on the catalog, not to_regclass(): that looks the name up without a lock, in a cache that can still
        # miss a table another process created while this transaction waited for WRITE_LOCK.
        rows = await db.execute_fetchall(
            f"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
            f"WHERE schemaname = current_schema() AND tablename = '{SCHEMA_TABLE}')"
        )
        if not rows[0][0]:
            return 0  # an empty database
        rows = await db.execute_fetchall(f"SELECT MAX(version) FROM {SCHEMA_TABLE}")
        return int(rows[0][0] or 0)

    @staticmethod
    async def _set_user_version(db: _Connection, version: int) -> None:
        # Called inside the locked migration transaction: DDL is transactional in PostgreSQL.
        await db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        await db.execute(f"DELETE FROM {SCHEMA_TABLE}")
        await db.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (?)", (version,))

    async def close(self) -> None:
        """Close the pool; safe to call more than once."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except _ERRORS:  # a server that is gone or stuck: drop the connections without goodbye
            pool.terminate()

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[_Connection]:
        """A pooled connection, with driver errors translated; no transaction (single reads)."""
        pool = self._pool
        if pool is None:
            raise StorageError("the label store is closed", reason="unreachable")
        try:
            async with pool.acquire() as con:
                yield _Connection(con)
        except _ERRORS as exc:
            error = _translate(exc, self._server)
            if error is None:
                raise
            if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
                self.read_only = True
            raise error from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        """A transaction holding WRITE_LOCK, committed at the end and rolled back on any error."""
        async with self._guard() as db, db.con.transaction():
            # Taken before anything is read: what the transaction reads cannot change before it writes, whichever
            # process the other writers run in. Released by COMMIT/ROLLBACK.
            await db.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            yield db
