"""bot.store schema v2 on both backends (the fixtures of test_store.py: [sqlite] and [postgres]): answer styles and
their place in the shared history and undo, members' corrections, and the migration of a v1 database that has rows.
"""

from __future__ import annotations

import json
import sqlite3

import asyncpg
import pytest

from bot.store import (
    SCHEMA_VERSION,
    STYLES,
    Correction,
    HistoryEntry,
    NothingToUndo,
    VersionConflict,
    open_store,
    parse_storage_url,
)
from bot.store import base as storage
from tests.bot.store.test_store import (  # noqa: F401  (the fixtures, for both backends)
    C2,
    G2,
    C,
    G,
    U,
    db_path,
    is_sqlite,
    raw,
    schema_version,
    store,
    store_url,
    table_names,
)

U2 = 666_666_666_666_666_666
T = 3_333_333_333_333_333_333  # a thread of C
F = 4_444_444_444_444_444_444  # a forum
T2 = 5_555_555_555_555_555_555  # a post (thread) of F
M = 7_000_000_000_000_000_000  # message ids start here
A = 8_000_000_000_000_000_000  # attachment ids start here


# ---------------------------------------------------------------- styles


def test_styles_are_the_documented_four():
    assert STYLES == ("embed", "reaction", "tags", "none")


async def test_style_set_get_reset(store):
    assert await store.get_style(G, C) is None
    assert await store.get_style(G, None) is None

    change = await store.write_style(G, C, "reaction", user_id=U)
    assert change == HistoryEntry(1, "style", None, U, change.at, None, False, kind="style", style="reaction")
    assert await store.get_style(G, C) == "reaction"
    assert await store.get_style(G, None) is None  # the server default is its own scope
    assert await store.get_style(G, C2) is None and await store.get_style(G2, C) is None

    await store.write_style(G, None, "none", user_id=U)
    assert await store.get_style(G, None) == "none"
    assert (await store.write_style(G, C, "tags", user_id=U2)).version == 2
    assert await store.get_style(G, C) == "tags"

    reset = await store.write_style(G, C, None, user_id=U)
    assert (reset.version, reset.action, reset.kind, reset.style, reset.labels) == (3, "style", "style", None, None)
    assert await store.get_style(G, C) is None
    assert await store.get_style(G, None) == "none"  # untouched
    assert await store.get(G, C) is None  # a style change writes no label set


async def test_write_style_refuses_bad_arguments_and_writes_nothing(store):
    await store.write_style(G, C, "embed", user_id=U)
    for bad in ("Embed", "", "reactions", "labels"):
        with pytest.raises(ValueError, match="unknown style"):
            await store.write_style(G, C, bad, user_id=U)
    with pytest.raises(ValueError, match="reserved"):
        await store.write_style(G, 0, "embed", user_id=U)
    with pytest.raises(ValueError, match="reserved"):
        await store.get_style(G, 0)
    assert await store.get_style(G, C) == "embed"
    assert [e.version for e in await store.history(G, C)] == [1]


async def test_history_shows_both_kinds_with_one_version_sequence(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    await store.write_style(G, C, "embed", user_id=U2)
    await store.write(G, C, ("犬", "猫"), user_id=U, action="add")
    await store.write_style(G, C, None, user_id=U)
    await store.write_style(G, None, "tags", user_id=U)  # another scope: its own sequence

    entries = await store.history(G, C)
    assert [(e.version, e.kind, e.action, e.labels, e.style, e.user_id) for e in entries] == [
        (4, "style", "style", None, None, U),
        (3, "labels", "add", ("犬", "猫"), None, U),
        (2, "style", "style", None, "embed", U2),
        (1, "labels", "set", ("犬",), None, U),
    ]
    assert [e.version for e in await store.history(G, None)] == [1]
    assert [e.kind for e in await store.history(G, C, limit=2)] == ["style", "labels"]
    # the label set's own version is the version of its last label change, not of the scope's last change
    assert (await store.get(G, C)).version == 3


async def test_style_write_does_not_disturb_expected_version_of_label_writes(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    read = await store.get(G, C)
    await store.write_style(G, C, "reaction", user_id=U2)  # someone changes the style meanwhile
    assert (await store.get(G, C)).version == read.version == 1

    with pytest.raises(VersionConflict) as info:
        await store.write(G, C, ("猫",), user_id=U, action="set", expected_version=2)
    assert info.value.current_version == 1
    change = await store.write(G, C, ("犬", "猫"), user_id=U, action="add", expected_version=read.version)
    assert change.version == 3  # after the style change's version 2
    assert (await store.get(G, C)).version == 3

    # a style on a scope without a set of its own: the caller still reads 0
    await store.write_style(G, C2, "tags", user_id=U)
    assert await store.get(G, C2) is None
    assert (await store.write(G, C2, ("象",), user_id=U, action="set", expected_version=0)).version == 2


async def test_undo_walks_back_across_kinds(store):
    await store.write(G, C, ("A",), user_id=U, action="set")  # v1
    await store.write_style(G, C, "embed", user_id=U)  # v2
    await store.write(G, C, ("A", "B"), user_id=U, action="add")  # v3: the row just before it is a style row
    await store.write_style(G, C, "tags", user_id=U)  # v4
    await store.write_style(G, C, None, user_id=U)  # v5: style reset

    undone = await store.undo(G, C, user_id=U2)  # reverts v5: the style before it was tags
    assert (undone.version, undone.action, undone.kind, undone.style, undone.labels, undone.detail) == (
        6,
        "undo",
        "style",
        "tags",
        None,
        "5",
    )
    assert undone.user_id == U2
    assert await store.get_style(G, C) == "tags"
    assert (await store.get(G, C)).labels == ("A", "B") and (await store.get(G, C)).version == 3

    undone = await store.undo(G, C, user_id=U)  # reverts v4 (tags): back to embed
    assert (undone.version, undone.kind, undone.style, undone.detail) == (7, "style", "embed", "4")
    assert await store.get_style(G, C) == "embed"

    undone = await store.undo(G, C, user_id=U)  # reverts v3 (add B): the labels of v1, not the style row v2's NULL
    assert (undone.version, undone.kind, undone.labels, undone.style, undone.detail) == (8, "labels", ("A",), None, "3")
    assert (await store.get(G, C)).labels == ("A",)
    assert (await store.get(G, C)).version == 8
    assert await store.get_style(G, C) == "embed"  # a label undo leaves the style alone

    undone = await store.undo(G, C, user_id=U)  # reverts v2: no style before it
    assert (undone.version, undone.kind, undone.style, undone.detail) == (9, "style", None, "2")
    assert await store.get_style(G, C) is None
    assert (await store.get(G, C)).labels == ("A",) and (await store.get(G, C)).version == 8

    undone = await store.undo(G, C, user_id=U)  # reverts v1: no set of its own
    assert (undone.version, undone.kind, undone.labels, undone.detail) == (10, "labels", None, "1")
    assert await store.get(G, C) is None
    with pytest.raises(NothingToUndo):
        await store.undo(G, C, user_id=U)

    entries = await store.history(G, C, limit=100)
    assert [(e.version, e.reverted) for e in entries if e.action != "undo"] == [
        (5, True),
        (4, True),
        (3, True),
        (2, True),
        (1, True),
    ]
    assert not any(e.reverted for e in entries if e.action == "undo")


async def test_undo_of_a_label_change_after_a_style_change_restores_the_labels(store):
    # The row just before the label change is a style row (labels NULL): the labels come from the label row before.
    await store.write(G, C, ("犬", "猫"), user_id=U, action="set")
    await store.write_style(G, C, "reaction", user_id=U)
    await store.write(G, C, ("犬", "猫", "象"), user_id=U, action="add")
    await store.write_style(G, C, "embed", user_id=U)
    assert (await store.undo(G, C, user_id=U)).style == "reaction"
    restored = await store.undo(G, C, user_id=U)
    assert (restored.kind, restored.labels, restored.detail) == ("labels", ("犬", "猫"), "3")
    assert (await store.get(G, C)).labels == ("犬", "猫")


async def test_undo_of_a_style_after_label_undos_finds_the_older_style(store):
    await store.write_style(G, C, "tags", user_id=U)  # v1
    await store.write(G, C, ("犬",), user_id=U, action="set")  # v2
    await store.write_style(G, C, "none", user_id=U)  # v3
    await store.write(G, C, ("猫",), user_id=U, action="set")  # v4
    assert (await store.undo(G, C, user_id=U)).labels == ("犬",)  # v5 undoes v4
    # the next target is v3 (a style change); the undo row v5 is never a target
    undone = await store.undo(G, C, user_id=U)
    assert (undone.version, undone.kind, undone.style, undone.detail) == (6, "style", "tags", "3")
    assert await store.get_style(G, C) == "tags"
    # a new change after undos: undo reverts it, restoring the state the undo row recorded
    await store.write_style(G, C, "reaction", user_id=U)  # v7
    assert (await store.undo(G, C, user_id=U)).style == "tags"  # from undo row v6
    assert await store.get_style(G, C) == "tags"


async def test_style_undo_leaves_the_label_sets_version(store):
    await store.write(G, C, ("犬",), user_id=U, action="set")
    await store.write_style(G, C, "embed", user_id=U)
    await store.undo(G, C, user_id=U)
    assert await store.get_style(G, C) is None
    assert (await store.get(G, C)).version == 1
    assert (await store.write(G, C, ("猫",), user_id=U, action="set", expected_version=1)).version == 4


async def test_styles_survive_reopening(store_url):
    s = await open_store(store_url)
    try:
        await s.write_style(G, C, "reaction", user_id=U)
        history = await s.history(G, C)
    finally:
        await s.close()
    s = await open_store(store_url)
    try:
        assert await s.get_style(G, C) == "reaction"
        assert await s.history(G, C) == history
    finally:
        await s.close()


# ---------------------------------------------------------------- corrections


def correction(
    n: int,
    *,
    user: int = U,
    guild: int = G,
    channel: int = C,
    parent: int | None = None,
    message: int | None = None,
    chosen: str | None = "猫",
    shown: str = "犬",
    labels: tuple[str, ...] = ("犬", "猫=🐈", "象"),
    at: float = 1_700_000_000.0,
) -> Correction:
    """The correction of attachment A + n (on message M + n unless given)."""
    return Correction(
        guild, channel, parent, M + n if message is None else message, A + n, user, shown, chosen, labels, at + n
    )


async def raw_url(store, sql: str) -> list[tuple]:
    """Rows of sql on the store's own database (the store's connection: works for :memory: and PostgreSQL alike)."""
    async with store._guard() as db:
        return [tuple(row) for row in await db.execute_fetchall(sql)]


async def test_record_new_then_changed_and_get(store):
    assert await store.get_correction(A + 1, U) is None
    first = correction(1)
    assert await store.record_correction(first) is True
    assert await store.get_correction(A + 1, U) == first
    assert await store.get_correction(A + 1, U2) is None
    assert await store.get_correction(A + 2, U) is None

    changed = correction(1, chosen=None, at=1_800_000_000.0)  # the member changes their mind: "none of these"
    assert await store.record_correction(changed) is False
    assert await store.get_correction(A + 1, U) == changed
    assert (await store.get_correction(A + 1, U)).chosen is None

    other = correction(1, user=U2, chosen="象")  # another member on the same image: a row of its own
    assert await store.record_correction(other) is True
    assert await store.get_correction(A + 1, U2) == other
    assert await store.get_correction(A + 1, U) == changed
    assert len(await store.corrections(G)) == 2


async def test_correction_round_trips_exactly(store):
    c = Correction(G, T, C, M, A, U, "ｶﾀｶﾅ", "👨\u200d👩\u200d👧", ("ｶﾀｶﾅ", "👨\u200d👩\u200d👧", 'a "q" \\'), 1.5)
    await store.record_correction(c)
    got = await store.get_correction(A, U)
    assert got == c and isinstance(got.labels, tuple)
    (labels,) = (row[0] for row in await raw_url(store, "SELECT labels FROM corrections"))
    assert json.loads(labels) == list(c.labels) and "ｶﾀｶﾅ" in labels  # readable UTF-8 JSON


async def test_record_correction_refuses_bad_labels(store):
    with pytest.raises(TypeError):
        await store.record_correction(correction(1, labels="犬猫"))
    with pytest.raises(TypeError):
        await store.record_correction(correction(1, labels=None))
    with pytest.raises(TypeError):
        await store.record_correction(correction(1, labels=("犬", 3)))
    assert await store.corrections(G) == []


async def test_corrections_oldest_first_and_filters(store):
    rows = [
        correction(5, at=100.0),  # in C
        correction(2, channel=T, parent=C, at=100.0),  # in a thread of C
        correction(3, channel=C2, at=100.0),
        correction(4, channel=T2, parent=F, at=100.0),  # a forum post
        correction(1, user=U2, at=100.0),
        correction(6, guild=G2, at=100.0),  # another guild, same channel id
    ]
    for c in rows:
        assert await store.record_correction(c)
    mine = [c for c in rows if c.guild_id == G]

    everything = await store.corrections(G)
    assert everything == sorted(mine, key=lambda c: c.at)
    assert [c.attachment_id - A for c in everything] == [1, 2, 3, 4, 5]
    assert await store.corrections(G2) == [rows[5]]

    def ids(found: list[Correction]) -> list[int]:
        return [c.attachment_id - A for c in found]

    assert ids(await store.corrections(G, channel_ids=[C])) == [1, 2, 5]  # the channel and its thread
    assert ids(await store.corrections(G, channel_ids={T})) == [2]  # the thread alone
    assert ids(await store.corrections(G, channel_ids=(F,))) == [4]  # the forum's posts
    assert ids(await store.corrections(G, channel_ids=[C2, F])) == [3, 4]
    assert await store.corrections(G, channel_ids=[]) == []
    assert await store.corrections(G, channel_ids=[12345]) == []
    assert ids(await store.corrections(G2, channel_ids=[C])) == [6]

    assert ids(await store.corrections(G, since=103.0)) == [3, 4, 5]  # at >= since
    assert ids(await store.corrections(G, since=103.5)) == [4, 5]
    assert ids(await store.corrections(G, channel_ids=[C], since=102.0)) == [2, 5]
    assert await store.corrections(G, since=1e12) == []


async def test_corrections_with_more_channel_ids_than_one_statement_holds(store):
    await store.record_correction(correction(1, channel=T, parent=C))
    await store.record_correction(correction(2, channel=C2))
    # C in the first chunk, T in a later one: the thread's row matches both (parent_id, channel_id), listed once
    many = [C, *range(C + 1, C + 2500), T]
    assert [c.attachment_id - A for c in await store.corrections(G, channel_ids=many)] == [1]
    assert len(await store.corrections(G, channel_ids=[*many, C2])) == 2


async def test_forget_corrections_variants(store):
    async def seed() -> None:
        await store.forget_corrections(G)
        await store.forget_corrections(G2)
        for c in [
            correction(1),
            correction(1, user=U2),  # the same image, another member
            correction(2, channel=T, parent=C),
            correction(3, channel=C2),
            correction(4, channel=C2, user=U2),
            correction(5, guild=G2, user=U2),
        ]:
            await store.record_correction(c)

    async def left() -> set[tuple[int, int]]:
        return {(c.attachment_id - A, c.user_id) for c in await store.corrections(G)}

    await seed()
    assert await store.forget_corrections(G, message_ids=[M + 1, M + 3, 99]) == 3
    assert await left() == {(2, U), (4, U2)}
    assert await store.forget_corrections(G, message_ids=[]) == 0
    assert await store.forget_corrections(G2, message_ids=[M + 2]) == 0  # another guild's ids never match

    await seed()
    assert await store.forget_corrections(G, channel_id=C) == 3  # the channel and its thread
    assert await left() == {(3, U), (4, U2)}
    await seed()
    assert await store.forget_corrections(G, channel_id=T) == 1  # a thread alone
    assert await left() == {(1, U), (1, U2), (3, U), (4, U2)}

    await seed()
    assert await store.forget_corrections(G, user_id=U2) == 2
    assert await left() == {(1, U), (2, U), (3, U)}
    assert len(await store.corrections(G2)) == 1  # the member's rows in another guild stay

    await seed()
    assert await store.forget_corrections(G, channel_id=C2, user_id=U2) == 1  # given together: both must match
    assert await left() == {(1, U), (1, U2), (2, U), (3, U)}

    await seed()
    assert await store.forget_corrections(G) == 5  # the whole guild
    assert await left() == set()
    assert len(await store.corrections(G2)) == 1
    assert await store.forget_corrections(G) == 0


async def test_forget_corrections_with_many_message_ids(store):
    for n in range(5):
        await store.record_correction(correction(n))
    messages = [M + n for n in range(1, 5)] + list(range(1, 2000))
    assert await store.forget_corrections(G, message_ids=messages) == 4
    assert [c.attachment_id for c in await store.corrections(G)] == [A]


# ---------------------------------------------------------------- migration v1 → v2


async def run_script(url: str, statements: list[str]) -> None:
    """Statements on the database behind url in one go, bypassing LabelStore."""
    if is_sqlite(url):
        con = sqlite3.connect(parse_storage_url(url), isolation_level=None)
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()
        return
    con = await asyncpg.connect(url)
    try:
        for statement in statements:
            await con.execute(statement)
    finally:
        await con.close()


async def make_v1_database(url: str) -> None:
    """A database as Wakeru with schema v1 left it: its tables, its version and some rows of each table."""
    version = (
        ["PRAGMA user_version = 1"]
        if is_sqlite(url)
        else ["CREATE TABLE wakeru_schema (version INTEGER NOT NULL)", "INSERT INTO wakeru_schema VALUES (1)"]
    )
    await run_script(
        url,
        [
            *storage.MIGRATIONS[0],
            *version,
            f'INSERT INTO label_sets VALUES ({G}, {C}, \'["犬", "猫"]\', 2, {U}, 1000.5)',
            f"INSERT INTO label_sets VALUES ({G}, 0, '[\"既定\"]', 1, NULL, 1000.0)",
            "INSERT INTO label_history (guild_id, channel_id, version, action, labels, user_id, at, detail, reverted) "
            f"VALUES ({G}, {C}, 1, 'set', '[\"犬\"]', {U}, 999.0, NULL, FALSE)",
            "INSERT INTO label_history (guild_id, channel_id, version, action, labels, user_id, at, detail, reverted) "
            f"VALUES ({G}, {C}, 2, 'add', '[\"犬\", \"猫\"]', {U}, 1000.5, NULL, FALSE)",
            "INSERT INTO label_history (guild_id, channel_id, version, action, labels, user_id, at, detail, reverted) "
            f"VALUES ({G}, 0, 1, 'preset', '[\"既定\"]', NULL, 1000.0, 'default', FALSE)",
            f"INSERT INTO channel_settings VALUES ({G}, {C}, TRUE, {U}, 1000.0)",
        ],
    )


async def test_a_v1_database_with_rows_migrates_to_v2(store_url):
    assert SCHEMA_VERSION == 2
    await make_v1_database(store_url)
    assert await schema_version(store_url) == 1
    assert not {"channel_styles", "corrections"} & await table_names(store_url)

    s = await open_store(store_url)
    try:
        assert await schema_version(store_url) == SCHEMA_VERSION
        assert {"label_sets", "label_history", "channel_settings", "channel_styles", "corrections"} <= (
            await table_names(store_url)
        )
        # the v1 rows are all there, and the old history rows read as label changes
        assert (await s.get(G, C)).labels == ("犬", "猫") and (await s.get(G, C)).version == 2
        assert (await s.get(G, None)).labels == ("既定",)
        assert await s.get_auto(G, C) is True
        assert await s.history(G, C) == [
            HistoryEntry(2, "add", ("犬", "猫"), U, 1000.5, None, False, "labels", None),
            HistoryEntry(1, "set", ("犬",), U, 999.0, None, False, "labels", None),
        ]
        assert await s.get_style(G, C) is None

        # and v2 works on top of them: versions continue, undo crosses kinds, corrections record
        assert (await s.write_style(G, C, "tags", user_id=U)).version == 3
        assert (await s.write(G, C, ("象",), user_id=U, action="set", expected_version=2)).version == 4
        assert (await s.undo(G, C, user_id=U)).labels == ("犬", "猫")
        assert (await s.undo(G, C, user_id=U)).style is None
        assert (await s.undo(G, C, user_id=U)).labels == ("犬",)
        assert await s.record_correction(correction(1)) is True
    finally:
        await s.close()

    s = await open_store(store_url)  # reopening an up-to-date database migrates nothing
    try:
        assert await schema_version(store_url) == SCHEMA_VERSION
        assert [e.version for e in await s.history(G, C, limit=100)] == [7, 6, 5, 4, 3, 2, 1]
        assert await s.get_correction(A + 1, U) == correction(1)
    finally:
        await s.close()


async def test_migration_step_two_only_appends(store_url):
    """Step 1 is released: v2 must not change it, so a v1 database and a fresh one end up the same."""
    assert storage.MIGRATIONS[0][0].split()[:3] == ["CREATE", "TABLE", "label_sets"]
    assert len(storage.MIGRATIONS[0]) == 3
    await make_v1_database(store_url)
    await (await open_store(store_url)).close()
    migrated = await columns(store_url)
    fresh_url = store_url
    if is_sqlite(store_url):
        fresh_url = store_url.replace("wakeru.db", "fresh.db")
        await (await open_store(fresh_url)).close()
        assert await columns(fresh_url) == migrated
    assert migrated["label_history"][-2:] == ["kind", "style"]
    assert migrated["channel_styles"] == ["guild_id", "channel_id", "style", "updated_by", "updated_at"]
    assert migrated["corrections"] == [
        "guild_id",
        "channel_id",
        "parent_id",
        "message_id",
        "attachment_id",
        "user_id",
        "shown",
        "chosen",
        "labels",
        "at",
    ]


async def columns(url: str) -> dict[str, list[str]]:
    if is_sqlite(url):
        tables = [row[0] for row in await raw(url, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [row[1] for row in await raw(url, f"PRAGMA table_info({t})")] for t in tables}
    rows = await raw(
        url,
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "ORDER BY table_name, ordinal_position",
    )
    result: dict[str, list[str]] = {}
    for table, column in rows:
        result.setdefault(table, []).append(column)
    return result


async def test_an_edit_that_removes_images_removes_their_corrections(store):
    for n in (1, 2, 3):
        await store.record_correction(correction(n, message=M))  # three images of one message
        await store.record_correction(correction(n, message=M, user=U + 1))
    await store.record_correction(correction(9))  # another message
    assert await store.keep_correction_attachments(M, [A + 1, A + 3]) == 2  # image 2 is gone: both members' rows
    left = {(c.attachment_id, c.user_id) for c in await store.corrections(G)}
    assert left == {(A + 1, U), (A + 1, U + 1), (A + 3, U), (A + 3, U + 1), (A + 9, U)}
    assert await store.keep_correction_attachments(M, []) == 4  # no image left on it
    assert [c.attachment_id for c in await store.corrections(G)] == [A + 9]
