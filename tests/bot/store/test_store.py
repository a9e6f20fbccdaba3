"""bot.store against real SQLite files in tmp_path and, for the behaviour both backends share, against a fresh
database on a throwaway PostgreSQL server (tests/support/postgres_server.py; skipped when PostgreSQL is not installed,
unless WAKERU_REQUIRE_SERVICES=1).

Tests taking `store` or `store_url` run once per backend ([sqlite], [postgres]); SQLite-only ones take `db_path` or
`sqlite_store`. PostgreSQL-only behaviour is in test_postgres.py; answer styles, corrections and the v1 → v2
migration are in test_styles_corrections.py (on the fixtures of this module)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from bot.store import (
    SCHEMA_VERSION,
    HistoryEntry,
    LabelSet,
    LabelStore,
    NothingToUndo,
    SQLiteLabelStore,
    StorageError,
    VersionConflict,
    open_store,
    parse_storage_url,
)
from bot.store import base as storage
from tests.conftest import REPO

# Snowflake-sized IDs: they must survive as 64-bit integers.
G = 1_234_567_890_123_456_789
G2 = 987_654_321_098_765_432
C = 1_111_111_111_111_111_111
C2 = 2_222_222_222_222_222_222
U = 555_555_555_555_555_555

as_root = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(as_root, reason="root ignores file permissions")


def url_for(path: Path) -> str:
    return f"sqlite:///{path}"  # tmp_path is absolute → sqlite:////tmp/…


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "wakeru.db"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, db_path: Path) -> str:
    """An empty store's URL: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return url_for(db_path)
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def store(store_url: str):
    s = await open_store(store_url)
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(db_path: Path):
    s = await SQLiteLabelStore.open(url_for(db_path))
    yield s
    await s.close()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


async def raw(url: str, sql: str) -> list[tuple]:
    """One statement on the database behind url, bypassing LabelStore (sqlite3 or asyncpg); its rows."""
    if is_sqlite(url):
        con = sqlite3.connect(parse_storage_url(url), isolation_level=None)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    con = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await con.fetch(sql)]
    finally:
        await con.close()


async def schema_version(url: str) -> int:
    sql = "PRAGMA user_version" if is_sqlite(url) else "SELECT version FROM wakeru_schema"
    (row,) = await raw(url, sql)
    return row[0]


async def table_names(url: str) -> set[str]:
    sql = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if is_sqlite(url)
        else "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    return {row[0] for row in await raw(url, sql)}


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/wakeru.db", "data/wakeru.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLite:///w.db", "w.db"),
    ],
)
def test_parse_storage_url(url, path):
    assert parse_storage_url(url) == path


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("postgresql://wakeru:hunter2@db/wakeru", "open it with open_store()"),
        ("postgres://wakeru:hunter2@db/wakeru", "open it with open_store()"),
        ("postgresql+asyncpg://wakeru:hunter2@db/wakeru", "write postgresql:// instead"),
        ("mysql://wakeru:hunter2@db/wakeru", "'mysql' is not supported"),
        ("data/wakeru.db", "not a URL"),
        ("sqlite://host/wakeru.db", "third slash"),
        ("sqlite:///", "no file path"),
        ("", "not a URL"),
    ],
)
def test_parse_storage_url_errors(url, phrase):
    with pytest.raises(StorageError) as info:
        parse_storage_url(url)
    message = str(info.value)
    assert phrase in message
    assert "sqlite:///relative/path.db" in message and "sqlite:////absolute/path.db" in message
    assert "hunter2" not in message  # a URL's password never reaches logs


async def test_open_creates_parent_dir_for_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = await SQLiteLabelStore.open("sqlite:///data/sub/wakeru.db")
    try:
        await s.write(G, C, ("犬",), user_id=U, action="set")
    finally:
        await s.close()
    assert (tmp_path / "data" / "sub" / "wakeru.db").is_file()


async def test_memory_database_works():
    s = await SQLiteLabelStore.open("sqlite:///:memory:")
    try:
        assert (await s.write(G, C, ("犬",), user_id=U, action="set")).version == 1
        assert (await s.get(G, C)).labels == ("犬",)
    finally:
        await s.close()


# ---------------------------------------------------------------- get / write / versions


async def test_get_without_set_is_none(store):
    assert await store.get(G, C) is None
    assert await store.get(G, None) is None
    assert await store.history(G, C) == []


async def test_write_then_get_and_versions_increase(store):
    before = time.time()
    first = await store.write(G, C, ("犬", "猫"), user_id=U, action="set")  # the change, as recorded
    assert first == HistoryEntry(1, "set", ("犬", "猫"), U, first.at, None, False)
    assert before <= first.at <= time.time()
    assert await store.get(G, C) == LabelSet(G, C, ("犬", "猫"), 1, U, first.at)
    assert (await store.history(G, C, limit=1))[0] == first

    second = await store.write(G, C, ("犬", "猫", "象"), user_id=None, action="add", expected_version=1)
    assert (second.version, second.labels, second.user_id) == (2, ("犬", "猫", "象"), None)
    assert await store.get(G, C) == LabelSet(G, C, ("犬", "猫", "象"), 2, None, second.at)


async def test_identical_write_is_still_recorded(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    again = await store.write(G, C, ("犬",), user_id=U, action="set")
    assert again.version == 2
    assert [e.version for e in await store.history(G, C)] == [2, 1]


async def test_write_rejects_bad_arguments_and_writes_nothing(store):
    with pytest.raises(ValueError, match="unknown action"):
        await store.write(G, C, ("犬",), user_id=U, action="undo")
    with pytest.raises(ValueError, match="unknown action"):
        await store.write(G, C, ("犬",), user_id=U, action="frobnicate")
    with pytest.raises(TypeError):
        await store.write(G, C, "犬猫", user_id=U, action="set")
    with pytest.raises(TypeError):
        await store.write(G, C, ("犬", 3), user_id=U, action="set")
    with pytest.raises(ValueError, match="reserved"):
        await store.get(G, 0)
    assert await store.history(G, C) == []


async def test_reset_falls_back_and_version_continues(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    await store.write(G, C, ("犬", "猫"), user_id=U, action="add")
    reset = await store.write(G, C, None, user_id=U, action="reset", expected_version=2)
    assert (reset.version, reset.action, reset.labels) == (3, "reset", None)
    assert await store.get(G, C) is None
    top = (await store.history(G, C))[0]
    assert (top.version, top.action, top.labels) == (3, "reset", None)

    # No set of its own now: the caller reads "0", and the next version continues after the reset.
    again = await store.write(G, C, ("象",), user_id=U, action="set", expected_version=0)
    assert again.version == 4
    assert (await store.get(G, C)).version == 4


async def test_history_order_limit_and_contents(store):
    await store.write(G, C, ("犬",), user_id=1, action="set")
    await store.write(G, C, ("犬", "猫"), user_id=2, action="add")
    await store.write(G, C, ("猫",), user_id=3, action="remove")
    await store.write(G, C, ("ライオン", "トラ"), user_id=None, action="preset", detail="animals")

    entries = await store.history(G, C)
    assert [e.version for e in entries] == [4, 3, 2, 1]
    assert [e.action for e in entries] == ["preset", "remove", "add", "set"]
    assert [e.labels for e in entries] == [("ライオン", "トラ"), ("猫",), ("犬", "猫"), ("犬",)]
    assert [e.user_id for e in entries] == [None, 3, 2, 1]
    assert [e.detail for e in entries] == ["animals", None, None, None]
    assert not any(e.reverted for e in entries)
    assert all(isinstance(e, HistoryEntry) for e in entries)
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)

    assert [e.version for e in await store.history(G, C, limit=2)] == [4, 3]
    assert await store.history(G, C, limit=0) == []
    with pytest.raises(ValueError):
        await store.history(G, C, limit=-1)


# ---------------------------------------------------------------- undo


async def test_undo_restores_previous_set(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    await store.write(G, C, ("犬", "猫"), user_id=U, action="add")
    undone = await store.undo(G, C, user_id=42)
    assert (undone.labels, undone.version, undone.user_id, undone.detail) == (("犬",), 3, 42, "2")
    assert (await store.get(G, C)).labels == ("犬",)

    entries = await store.history(G, C)
    assert (entries[0].action, entries[0].detail, entries[0].labels, entries[0].user_id) == ("undo", "2", ("犬",), 42)
    assert [e.reverted for e in entries] == [False, True, False]


async def test_repeated_undo_walks_back_then_nothing_to_undo(store):
    for labels in [("A",), ("A", "B"), ("A", "B", "C")]:
        await store.write(G, C, labels, user_id=U, action="set")
    assert (await store.undo(G, C, user_id=U)).labels == ("A", "B")
    assert (await store.undo(G, C, user_id=U)).labels == ("A",)
    assert (await store.undo(G, C, user_id=U)).labels is None  # undid the very first write: no set of its own
    assert await store.get(G, C) is None
    with pytest.raises(NothingToUndo):
        await store.undo(G, C, user_id=U)

    entries = await store.history(G, C)
    assert [(e.version, e.action, e.detail) for e in entries[:3]] == [
        (6, "undo", "1"),
        (5, "undo", "2"),
        (4, "undo", "3"),
    ]
    assert all(e.reverted for e in entries[3:])


async def test_undo_after_reset_restores_labels(store):
    await store.write(G, C, ("犬", "猫"), user_id=U, action="set")
    await store.write(G, C, None, user_id=U, action="reset")
    restored = await store.undo(G, C, user_id=U)
    assert (restored.labels, restored.version) == (("犬", "猫"), 3)
    assert (await store.get(G, C)).version == 3


async def test_undo_of_first_write_leaves_no_set(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    assert (await store.undo(G, C, user_id=U)).labels is None
    assert await store.get(G, C) is None
    top = (await store.history(G, C))[0]
    assert (top.version, top.action, top.labels, top.detail) == (2, "undo", None, "1")
    # Versions go on after an undo to "nothing".
    assert (await store.write(G, C, ("猫",), user_id=U, action="set", expected_version=0)).version == 3


async def test_undo_after_a_new_write_reverts_that_write_first(store):
    await store.write(G, C, ("A",), user_id=U, action="set")  # v1
    await store.write(G, C, ("B",), user_id=U, action="set")  # v2
    await store.undo(G, C, user_id=U)  # v3 → A, reverts v2
    await store.write(G, C, ("C",), user_id=U, action="set")  # v4
    assert (await store.undo(G, C, user_id=U)).labels == ("A",)  # v5 reverts v4, back to v3's state
    assert (await store.undo(G, C, user_id=U)).labels is None  # v6 reverts v1 (v2 is already reverted)
    with pytest.raises(NothingToUndo):
        await store.undo(G, C, user_id=U)


async def test_nothing_to_undo_on_empty_scope(store):
    with pytest.raises(NothingToUndo) as info:
        await store.undo(G, C, user_id=U)
    assert isinstance(info.value, StorageError)
    assert await store.history(G, C) == []


# ---------------------------------------------------------------- optimistic concurrency


async def test_version_conflict_leaves_data_unchanged(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    current = await store.write(G, C, ("犬", "猫"), user_id=U, action="add", expected_version=1)

    with pytest.raises(VersionConflict) as info:
        await store.write(G, C, ("象",), user_id=U, action="set", expected_version=1)
    assert info.value.current_version == 2
    assert "version 2" in str(info.value)
    with pytest.raises(VersionConflict):
        await store.write(G, C, None, user_id=U, action="reset", expected_version=0)
    with pytest.raises(VersionConflict):
        await store.write(G, C2, ("象",), user_id=U, action="set", expected_version=3)

    assert (await store.get(G, C)).version == current.version == 2
    assert [e.version for e in await store.history(G, C)] == [2, 1]
    assert await store.get(G, C2) is None


async def test_two_stores_same_expected_version_exactly_one_wins(store_url):
    a = await open_store(store_url)
    b = await open_store(store_url)
    try:
        await a.write(G, C, ("犬",), user_id=U, action="set")
        results = await asyncio.gather(
            a.write(G, C, ("A",), user_id=1, action="set", expected_version=1),
            b.write(G, C, ("B",), user_id=2, action="set", expected_version=1),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, HistoryEntry)]
        conflicts = [r for r in results if isinstance(r, VersionConflict)]
        assert len(wins) == 1 and len(conflicts) == 1, results
        assert wins[0].version == 2
        assert (await a.get(G, C)).labels == wins[0].labels == (await b.get(G, C)).labels
        assert [e.version for e in await b.history(G, C)] == [2, 1]
    finally:
        await a.close()
        await b.close()


async def test_concurrent_calls_on_one_store_are_serialised(store):
    results = await asyncio.gather(*(store.write(G, C, (f"L{i}",), user_id=i, action="set") for i in range(10)))
    assert sorted(r.version for r in results) == list(range(1, 11))
    results = await asyncio.gather(
        *(store.write(G, C, (f"M{i}",), user_id=i, action="set", expected_version=10) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, HistoryEntry) for r in results) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 4
    assert (await store.get(G, C)).version == 11


async def test_two_processes_opening_a_fresh_file_at_once(store_url):
    a, b = await asyncio.gather(open_store(store_url), open_store(store_url))
    try:
        await a.write(G, C, ("犬",), user_id=U, action="set")
        assert (await b.get(G, C)).labels == ("犬",)
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- persistence, scopes, auto flag


async def test_data_survives_restart(store_url):
    s = await open_store(store_url)
    written = await s.write(G, C, ("犬", "猫"), user_id=U, action="set")
    await s.write(G, None, ("既定",), user_id=U, action="preset", detail="default")
    await s.set_auto(G, C, False, user_id=U)
    history = await s.history(G, C)
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await s.get(G, C)

    s = await open_store(store_url)
    try:
        assert (await s.get(G, C)).labels == written.labels and await s.history(G, C, limit=1) == [written]
        assert (await s.get(G, None)).labels == ("既定",)
        assert await s.history(G, C) == history
        assert await s.get_auto(G, C) is False
        assert (await s.write(G, C, ("象",), user_id=U, action="set", expected_version=1)).version == 2
    finally:
        await s.close()


async def test_scopes_are_independent(store):
    channel = await store.write(G, C, ("犬",), user_id=U, action="set")
    default = await store.write(G, None, ("猫",), user_id=U, action="set")
    other_guild = await store.write(G2, C, ("象",), user_id=U, action="set")
    other_default = await store.write(G2, None, ("鳥",), user_id=U, action="set")
    assert channel.version == default.version == other_guild.version == other_default.version == 1
    assert (await store.get(G, None)).channel_id is None and (await store.get(G, C)).channel_id == C

    await store.write(G, C, None, user_id=U, action="reset")
    assert await store.get(G, C) is None
    assert (await store.get(G, None)).labels == default.labels
    assert (await store.get(G2, C)).labels == other_guild.labels
    assert (await store.get(G2, None)).labels == other_default.labels
    assert await store.get(G, C2) is None

    assert [e.version for e in await store.history(G, C)] == [2, 1]
    assert [e.labels for e in await store.history(G, None)] == [("猫",)]
    assert (await store.undo(G2, C, user_id=U)).labels is None
    assert (await store.get(G, None)).labels == default.labels  # undo in one scope never touches another
    with pytest.raises(NothingToUndo):
        await store.undo(G, C2, user_id=U)


async def test_auto_flag_set_get_clear(store):
    assert await store.get_auto(G, C) is None
    await store.set_auto(G, C, True, user_id=U)
    assert await store.get_auto(G, C) is True
    await store.set_auto(G, C, False, user_id=U)
    assert await store.get_auto(G, C) is False
    await store.set_auto(G, None, True, user_id=U)
    assert await store.get_auto(G, None) is True
    assert await store.get_auto(G2, C) is None
    assert await store.get_auto(G, C2) is None
    await store.set_auto(G, C, None, user_id=U)
    assert await store.get_auto(G, C) is None
    await store.set_auto(G, C, None, user_id=U)  # clearing twice is fine
    assert await store.get_auto(G, None) is True


async def test_unicode_and_mentions_round_trip_exactly(store_url):
    labels = (
        "犬",
        "ｶﾀｶﾅ",
        "🐱 ねこ",
        "👨‍👩‍👧",
        "@everyone",
        "<@&123456>",
        'quote " and \\ back',
        "e\u0301",
        "\u3000全角",
    )
    s = await open_store(store_url)
    await s.write(G, C, labels, user_id=U, action="set")
    await s.close()
    s = await open_store(store_url)
    try:
        assert (await s.get(G, C)).labels == labels
        assert (await s.history(G, C))[0].labels == labels
    finally:
        await s.close()
    ((text,),) = await raw(store_url, "SELECT labels FROM label_sets")
    assert "犬" in text and "🐱" in text  # stored as readable UTF-8, not \u escapes


# ---------------------------------------------------------------- schema / migrations


async def test_fresh_database_gets_latest_schema(store_url):
    assert SCHEMA_VERSION == len(storage.MIGRATIONS) >= 1
    s = await open_store(store_url)
    await s.close()
    s = await open_store(store_url)  # reopening does not re-run migrations (CREATE TABLE would fail)
    await s.close()
    assert await schema_version(store_url) == SCHEMA_VERSION
    if is_sqlite(store_url):
        assert (await raw(store_url, "PRAGMA journal_mode")) == [("wal",)]
    assert {"label_sets", "label_history", "channel_settings", "channel_styles", "corrections"} <= await table_names(
        store_url
    )


async def test_newer_schema_is_refused(store_url):
    if is_sqlite(store_url):
        await raw(store_url, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        await raw(store_url, "CREATE TABLE wakeru_schema (version INTEGER NOT NULL)")
        await raw(store_url, f"INSERT INTO wakeru_schema VALUES ({SCHEMA_VERSION + 1})")
    before = await table_names(store_url)
    with pytest.raises(StorageError) as info:
        await open_store(store_url)
    assert str(info.value) == (
        f"database schema v{SCHEMA_VERSION + 1} is newer than this Wakeru supports (v{SCHEMA_VERSION}); "
        f"upgrade Wakeru or point storage.url at another {'file' if is_sqlite(store_url) else 'database'}"
    )
    assert await schema_version(store_url) == SCHEMA_VERSION + 1
    assert await table_names(store_url) == before  # nothing created


async def test_file_that_is_not_a_database_is_refused(db_path):
    db_path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        await SQLiteLabelStore.open(url_for(db_path))


async def test_path_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StorageError, match="cannot open"):
        await SQLiteLabelStore.open(url_for(tmp_path / "dir.db"))


async def test_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create the directory"):
        await SQLiteLabelStore.open(url_for(tmp_path / "file" / "wakeru.db"))


# ---------------------------------------------------------------- failures leave nothing half-applied


async def _snapshot(s: LabelStore):
    return await s.get(G, C), await s.history(G, C, limit=100)


@needs_permissions
async def test_read_only_file_refuses_writes_and_keeps_data(db_path):
    s = await SQLiteLabelStore.open(url_for(db_path))
    await s.write(G, C, ("犬",), user_id=U, action="set")
    await s.close()
    before_mode = db_path.stat().st_mode
    os.chmod(db_path, 0o444)
    try:
        s = await SQLiteLabelStore.open(url_for(db_path))  # up to date: opens for reading
        try:
            before = await _snapshot(s)
            with pytest.raises(StorageError, match="read-only"):
                await s.write(G, C, ("猫",), user_id=U, action="set")
            with pytest.raises(StorageError, match="read-only"):
                await s.set_auto(G, C, True, user_id=U)
            assert await _snapshot(s) == before
        finally:
            await s.close()
    finally:
        os.chmod(db_path, stat.S_IMODE(before_mode))
    s = await SQLiteLabelStore.open(url_for(db_path))
    try:
        assert await _snapshot(s) == before
    finally:
        await s.close()


@needs_permissions
async def test_read_only_file_and_directory_is_refused_and_keeps_data(tmp_path):
    folder = tmp_path / "ro"
    path = folder / "wakeru.db"
    s = await SQLiteLabelStore.open(url_for(path))
    await s.write(G, C, ("犬",), user_id=U, action="set")
    before = await _snapshot(s)
    await s.close()
    os.chmod(path, 0o444)
    os.chmod(folder, 0o444)
    try:
        # SQLite cannot even reach (or, with r-x, create the -shm file beside) the database: refused at open.
        with pytest.raises(StorageError, match="cannot open|read-only"):
            s = await SQLiteLabelStore.open(url_for(path))
            await s.write(G, C, ("猫",), user_id=U, action="set")
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    s = await SQLiteLabelStore.open(url_for(path))
    try:
        assert await _snapshot(s) == before
    finally:
        await s.close()


async def test_read_only_connection_refuses_writes_and_keeps_data(sqlite_store):
    # Works as root too: query_only makes SQLite answer SQLITE_READONLY like a read-only file does.
    await sqlite_store.write(G, C, ("犬",), user_id=U, action="set")
    before = await _snapshot(sqlite_store)
    await sqlite_store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(StorageError, match="read-only") as info:
        await sqlite_store.write(G, C, ("猫",), user_id=U, action="set")
    assert info.value.reason == "read_only"  # what members may be told, without the file
    with pytest.raises(StorageError, match="read-only"):
        await sqlite_store.undo(G, C, user_id=U)
    await sqlite_store._db.execute("PRAGMA query_only = OFF")
    assert await _snapshot(sqlite_store) == before
    assert (await sqlite_store.write(G, C, ("猫",), user_id=U, action="set")).version == 2  # no transaction left open


async def test_disk_full_refuses_write_and_keeps_data(sqlite_store):
    await sqlite_store.write(G, C, ("犬",), user_id=U, action="set")
    before = await _snapshot(sqlite_store)
    (pages,) = await sqlite_store._db.execute_fetchall("PRAGMA page_count")
    await sqlite_store._db.execute(f"PRAGMA max_page_count = {pages[0]}")  # the "disk" holds no more pages
    big = tuple(f"ラベル{i:04d}" * 20 for i in range(300))
    with pytest.raises(StorageError, match="disk is full") as info:
        await sqlite_store.write(G, C, big, user_id=U, action="set")
    assert info.value.reason == "full"
    assert await _snapshot(sqlite_store) == before
    await sqlite_store._db.execute("PRAGMA max_page_count = 1000000")
    assert (await sqlite_store.write(G, C, big, user_id=U, action="set")).labels == big


async def test_failure_midway_rolls_back_the_history_row(sqlite_store):
    await sqlite_store.write(G, C, ("犬",), user_id=U, action="set")
    before = await _snapshot(sqlite_store)
    # The history row is inserted first; make the following label_sets write fail.
    await sqlite_store._db.execute(
        "CREATE TEMP TRIGGER fail_upsert BEFORE UPDATE ON label_sets BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        await sqlite_store.write(G, C, ("猫",), user_id=U, action="set")
    await sqlite_store._db.execute("DROP TRIGGER fail_upsert")
    assert await _snapshot(sqlite_store) == before
    assert (await sqlite_store.write(G, C, ("猫",), user_id=U, action="set")).version == 2


async def test_lock_held_too_long_is_a_storage_error(db_path, monkeypatch):
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr("bot.store.sqlite.BUSY_TIMEOUT_MS", 100)  # the backend's own copy is the one it uses
    s = await SQLiteLabelStore.open(url_for(db_path))
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        await s.write(G, C, ("犬",), user_id=U, action="set")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StorageError, match="locked"):
            await s.write(G, C, ("猫",), user_id=U, action="set")
        assert (await s.get(G, C)).labels == ("犬",)  # WAL: reads still work meanwhile
        other.execute("ROLLBACK")
        assert (await s.write(G, C, ("猫",), user_id=U, action="set")).version == 2
    finally:
        other.close()
        await s.close()


@pytest.mark.skipif(not as_root, reason="mounting a read-only file system needs root")
async def test_a_database_on_a_read_only_file_system_opens_for_reading_and_refuses_changes(tmp_path):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        s = await SQLiteLabelStore.open(url_for(mount / "wakeru.db"))
        await s.write(G, C, ("犬", "猫"), user_id=U, action="set", expected_version=0)
        await s.close()
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)]).returncode == 0
        s = await SQLiteLabelStore.open(url_for(mount / "wakeru.db"))
        try:
            assert s.read_only and (await s.get(G, C)).labels == ("犬", "猫")
            with pytest.raises(StorageError, match="read-only"):
                await s.write(G, C, ("犬", "鳥"), user_id=U, action="set", expected_version=1)
            assert (await s.get(G, C)).version == 1
        finally:
            await s.close()
        # killed before SQLite merged its write-ahead log: the change must not be hidden
        assert subprocess.run(["mount", "-o", "remount,rw", str(mount)]).returncode == 0
        killed = (
            f"import asyncio, os\nfrom bot.store import SQLiteLabelStore\nasync def main():\n"
            f"    s = await SQLiteLabelStore.open({url_for(mount / 'wakeru.db')!r})\n"
            f"    await s.write({G}, {C}, ('犬', '鳥'), user_id={U}, action='set', expected_version=1)\n"
            f"    os._exit(0)\nasyncio.run(main())\n"
        )
        assert subprocess.run([sys.executable, "-c", killed], cwd=REPO).returncode == 0
        assert (mount / "wakeru.db-wal").stat().st_size > 0
        wal_only = mount / "wal-only"  # the same files without -shm: SQLite cannot read the log then
        wal_only.mkdir()
        for name in ("wakeru.db", "wakeru.db-wal"):
            shutil.copy(mount / name, wal_only / name)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mount)]).returncode == 0
        for folder in (mount, wal_only):
            try:
                s = await SQLiteLabelStore.open(url_for(folder / "wakeru.db"))
            except StorageError as e:
                assert folder == wal_only and "mount it writable once" in str(e)
                continue
            try:
                assert (await s.get(G, C)).labels == ("犬", "鳥")  # the last committed version, read from the log
                with pytest.raises(StorageError, match="read-only"):
                    await s.write(G, C, ("猫", "鳥"), user_id=U, action="set", expected_version=2)
            finally:
                await s.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)])
