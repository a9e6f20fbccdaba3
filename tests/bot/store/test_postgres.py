"""bot.store.postgres against a real PostgreSQL server (tests/support/postgres_server.py): what only PostgreSQL
has — several bot processes on one database, the server's login and availability, read-only sessions. The
behaviour both backends share is tested for both in test_store.py.

Most tests get a fresh database on the session's server (postgres_url); the ones that stop or crash a server use
their own (own_server), so the others never notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from bot.store import SCHEMA_VERSION, HistoryEntry, SQLiteLabelStore, StorageError, open_store
from bot.store import base as storage
from bot.store import postgres as storage_postgres
from bot.store.postgres import WRITE_LOCK, PostgresLabelStore
from tests.bot.store.test_crash import Lines, close_pipes
from tests.conftest import REPO
from tests.support.postgres_server import start_server
from tests.support.storage_writer import CHANNEL, GUILD

G, C, U = GUILD, CHANNEL, 555_555_555_555_555_555

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # a real PostgreSQL server


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def fetch(url: str, sql: str) -> list[tuple]:
    con = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await con.fetch(sql)]
    finally:
        await con.close()


@pytest.fixture(scope="module")
def own_server():
    """A server of their own for the tests that stop or crash it."""
    server = start_server()
    yield server
    server.cleanup()


# ---------------------------------------------------------------- opening


async def test_open_store_picks_the_backend_by_scheme(postgres_url, tmp_path):
    store = await open_store(postgres_url)
    try:
        assert isinstance(store, PostgresLabelStore) and not store.read_only
        await store.write(G, C, ("犬",), user_id=U, action="set")
    finally:
        await store.close()
    store = await open_store("postgres://" + postgres_url.split("://", 1)[1])  # the short scheme too
    try:
        assert (await store.get(G, C)).labels == ("犬",)
    finally:
        await store.close()
    store = await open_store(f"sqlite:///{tmp_path}/x.db")
    try:
        assert type(store) is SQLiteLabelStore
    finally:
        await store.close()


async def test_schema_uses_the_shared_migrations_and_a_version_table(postgres_url):
    await (await open_store(postgres_url)).close()
    assert await fetch(postgres_url, "SELECT version FROM wakeru_schema") == [(SCHEMA_VERSION,)]
    types = dict(
        await fetch(
            postgres_url,
            "SELECT table_name || '.' || column_name, data_type "
            "FROM information_schema.columns WHERE table_schema = current_schema()",
        )
    )
    assert types["label_sets.guild_id"] == types["label_history.channel_id"] == "bigint"  # snowflakes fit
    assert types["label_history.reverted"] == types["channel_settings.auto_classify"] == "boolean"
    assert types["label_sets.updated_at"] == "double precision"


# ---------------------------------------------------------------- several bot processes


def start_writer(url: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.pg_writer", url, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(procs: dict[str, subprocess.Popen], readers: dict[str, Lines]) -> dict[str, list[str]]:
    """Wait for every writer to exit 0; their output lines."""
    try:
        for name, proc in procs.items():
            readers[name].drain(timeout=90)
            assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    finally:  # none left running, whatever failed
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            close_pipes(proc)
    return {name: reader.lines for name, reader in readers.items()}


async def test_writer_processes_on_one_set_lose_no_update_and_leave_no_gap(postgres_url, record_property):
    count = 25
    procs = {
        name: start_writer(
            postgres_url,
            "--mode",
            "add",
            "--name",
            name,
            "--count",
            str(count),
            "--think-ms",
            "3",
            "--seed",
            str(seed),
            "--wait-for-go",
        )
        for seed, name in enumerate(("a", "b", "c"))
    }
    readers = {name: Lines(proc) for name, proc in procs.items()}
    try:
        for reader in readers.values():
            reader.wait_for(lambda lines: "ready" in lines, timeout=60)
        for proc in procs.values():  # all start writing at the same moment
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
    finally:
        outputs = finish(procs, readers)

    by_version: dict[int, str] = {}
    conflicts = 0
    for name, lines in outputs.items():
        assert lines[-1].startswith("done "), lines[-3:]
        conflicts += int(lines[-1].split()[1])
        mine = [line.split() for line in lines if line.startswith("committed ")]
        assert [label for _, _, label in mine] == [f"{name}-{i}" for i in range(count)]  # each retried until it won
        for _, version, label in mine:
            assert int(version) not in by_version, f"version {version} committed twice"
            by_version[int(version)] = label
    total = count * len(procs)
    assert sorted(by_version) == list(range(1, total + 1))  # strictly increasing, no gaps

    store = await open_store(postgres_url)
    try:
        history = list(reversed(await store.history(G, C, limit=total + 10)))
        final = await store.get(G, C)
    finally:
        await store.close()
    assert [entry.version for entry in history] == list(range(1, total + 1))
    previous: tuple[str, ...] = ()
    for entry in history:  # every version is exactly the one before plus its own label: no update was lost
        assert entry.labels == previous + (by_version[entry.version],), f"version {entry.version} lost an update"
        previous = entry.labels
    assert final.version == total and sorted(final.labels) == sorted(by_version.values())
    record_property("pg_writers_conflicts", conflicts)
    print(
        f"\npostgres writers: {len(procs)} processes, {total} labels committed, {conflicts} version conflicts "
        f"retried, final version {final.version}"
    )


async def test_processes_opening_a_fresh_database_at_once_migrate_it_once(postgres_url):
    # The test holds the write lock, so every process reads "version 0" and then queues for it: when it is
    # released they all go for the migration at once, and only the first may apply it.
    blocker = await asyncpg.connect(postgres_url)
    procs: dict[str, subprocess.Popen] = {}
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        procs = {
            name: start_writer(postgres_url, "--mode", "add", "--name", name, "--count", "1")
            for name in ("p", "q", "r", "s")
        }
        deadline = time.monotonic() + 60
        while await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") < len(
            procs
        ):
            assert time.monotonic() < deadline, "the processes never queued for the migration lock"
            assert all(proc.poll() is None for proc in procs.values()), "a process gave up"
            await asyncio.sleep(0.05)
        await transaction.rollback()
    finally:
        await blocker.close()
        outputs = finish(procs, {name: Lines(proc) for name, proc in procs.items()})
    for lines in outputs.values():  # a second migration would have failed on CREATE TABLE
        assert lines[0] == "ready" and lines[-1].startswith("done "), lines
    assert await fetch(postgres_url, "SELECT version FROM wakeru_schema") == [(SCHEMA_VERSION,)]
    rows = await fetch(postgres_url, "SELECT version FROM label_history ORDER BY version")
    assert rows == [(v,) for v in range(1, len(procs) + 1)]


async def test_a_write_waits_for_another_process_and_reads_do_not(postgres_url, monkeypatch):
    patient = await open_store(postgres_url)  # the default lock timeout (BUSY_TIMEOUT_MS)
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 300)
    monkeypatch.setattr(storage_postgres, "BUSY_TIMEOUT_MS", 300)  # the backend's own copy is the one it uses
    hasty = await open_store(postgres_url)
    other = await asyncpg.connect(postgres_url)  # another bot process, in the middle of a change
    try:
        await patient.write(G, C, ("犬",), user_id=U, action="set")
        transaction = other.transaction()
        await transaction.start()
        await other.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        with pytest.raises(StorageError, match="stayed locked by another bot process for more than 0.3 s"):
            await hasty.write(G, C, ("猫",), user_id=U, action="set", expected_version=1)
        waiting = asyncio.create_task(patient.write(G, C, ("象",), user_id=U, action="set", expected_version=1))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert (await asyncio.wait_for(patient.get(G, C), 5)).labels == ("犬",)  # the pool: reads go on meanwhile
        assert (await asyncio.wait_for(hasty.history(G, C), 5))[0].version == 1
        await transaction.rollback()
        assert (await asyncio.wait_for(waiting, 5)).version == 2
    finally:
        await other.close()
        await hasty.close()
        await patient.close()


# ---------------------------------------------------------------- what an operator can fix


def assert_secret_kept(error: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(error)


async def test_wrong_password(postgres_server, postgres_url):
    url = postgres_server.url(database_of(postgres_url), password="hunter2-wrong")
    started = time.monotonic()
    with pytest.raises(StorageError, match="refused the password of user 'wakeru'") as info:
        await open_store(url)
    assert time.monotonic() - started < 5  # not retried: waiting would not fix it
    assert f"'{database_of(postgres_url)}' on 127.0.0.1:{postgres_server.port}" in str(info.value)
    assert_secret_kept(info.value, "hunter2")


async def test_missing_database(postgres_server):
    with pytest.raises(StorageError, match="'no_such_db' on 127.0.0.1:.* does not exist: create it") as info:
        await open_store(postgres_server.url("no_such_db", password="secret"))
    assert_secret_kept(info.value, "secret")


async def test_nothing_listening_is_retried_for_a_while_then_refused(monkeypatch, caplog):
    from tests.support.postgres_server import free_port

    monkeypatch.setattr(storage_postgres, "CONNECT_RETRY_S", 1.0)
    caplog.set_level(logging.WARNING, logger="wakeru.storage")
    started = time.monotonic()
    with pytest.raises(
        StorageError,
        match=r"cannot reach the PostgreSQL database 'wakeru' on 127\.0\.0\.1:\d+ .*"
        r"check that the server is running.*kept trying",
    ) as info:
        await open_store(f"postgresql://wakeru:hunter2@127.0.0.1:{free_port()}/wakeru")
    assert 0.5 < time.monotonic() - started < 5
    assert "retrying for up to 1 s" in caplog.text
    assert_secret_kept(info.value, "hunter2")
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(
    "url", ["postgresql://wakeru:hunter2@db:port/wakeru", "postgresql://wakeru:hunter2@db:99999/wakeru"]
)
async def test_malformed_url(url):
    with pytest.raises(StorageError, match="not a valid PostgreSQL URL") as info:
        await open_store(url)
    assert_secret_kept(info.value, "hunter2")


async def test_read_only_session_reads_but_refuses_changes(postgres_server, postgres_url):
    store = await open_store(postgres_url)
    await store.write(G, C, ("犬",), user_id=U, action="set")
    await store.set_auto(G, C, True, user_id=U)
    await store.close()
    postgres_server.sql(f"ALTER DATABASE {database_of(postgres_url)} SET default_transaction_read_only = on")
    store = await open_store(postgres_url)  # up to date: opens for reading
    try:
        assert store.read_only
        before = await store.get(G, C), await store.history(G, C), await store.get_auto(G, C)
        for change in (
            store.write(G, C, ("猫",), user_id=U, action="set", expected_version=1),
            store.undo(G, C, user_id=U),
            store.set_auto(G, C, False, user_id=U),
        ):
            with pytest.raises(StorageError, match="is read-only .*default_transaction_read_only") as info:
                await change
            assert_secret_kept(info.value, "secret")
            assert info.value.reason == "read_only"  # what members may be told, without the host
        assert (await store.get(G, C), await store.history(G, C), await store.get_auto(G, C)) == before
    finally:
        await store.close()
    postgres_server.sql(f"ALTER DATABASE {database_of(postgres_url)} RESET default_transaction_read_only")
    store = await open_store(postgres_url)
    try:
        assert not store.read_only
        assert (await store.write(G, C, ("猫",), user_id=U, action="set", expected_version=1)).version == 2
    finally:
        await store.close()


async def test_failure_midway_rolls_back_and_bugs_are_not_disguised(postgres_server, postgres_url):
    store = await open_store(postgres_url)
    try:
        await store.write(G, C, ("犬",), user_id=U, action="set")
        before = await store.get(G, C), await store.history(G, C)
        # The history row is inserted first; make the following label_sets update fail.
        postgres_server.sql(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'boom'; END $$; "
            "CREATE TRIGGER boom BEFORE UPDATE ON label_sets FOR EACH ROW EXECUTE FUNCTION boom()",
            database=database_of(postgres_url),
        )
        with pytest.raises(asyncpg.RaiseError, match="boom"):  # not an operator's problem: not a StorageError
            await store.write(G, C, ("猫",), user_id=U, action="set")
        postgres_server.sql("DROP TRIGGER boom ON label_sets", database=database_of(postgres_url))
        assert (await store.get(G, C), await store.history(G, C)) == before
        assert (await store.write(G, C, ("猫",), user_id=U, action="set")).version == 2  # the lock was released
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("error", "phrase"),
    [
        (asyncpg.DiskFullError("could not extend file: No space left on device"), "the server's disk is full"),
        (asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), "is read-only"),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), "lost the connection"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "lost the connect"),
        (ConnectionResetError(104, "Connection reset by peer"), "lost the connection"),
        (ConnectionRefusedError(111, "Connect call failed"), "cannot reach"),
        (TimeoutError(), "did not answer in time"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), "no free connection slot"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "does not accept connections"),
        (asyncpg.InsufficientPrivilegeError("permission denied for table label_sets"), "lacks a permission"),
    ],
)
def test_errors_an_operator_can_fix_are_explained(error, phrase):
    server = storage_postgres._Server.parse("postgresql://wakeru:hunter2@db.example:6543/labels")
    translated = storage_postgres._translate(error, server)
    assert isinstance(translated, StorageError)
    assert phrase in str(translated) and "'labels' on db.example:6543" in str(translated)
    assert_secret_kept(translated, "hunter2")


def test_other_errors_are_bugs_and_propagate():
    server = storage_postgres._Server.parse("postgresql://wakeru:hunter2@db/labels")
    for error in (
        asyncpg.UndefinedTableError('relation "label_sets" does not exist'),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ValueError("x"),
    ):
        assert storage_postgres._translate(error, server) is None


# ---------------------------------------------------------------- a server that goes away


async def test_server_crash_mid_operation_then_back(own_server):
    url = own_server.create_database()
    store = await open_store(url)
    holder = await asyncpg.connect(url)
    try:
        await store.write(G, C, ("犬",), user_id=U, action="set")
        await holder.execute("BEGIN")
        await holder.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        waiting = asyncio.create_task(store.write(G, C, ("猫",), user_id=U, action="set", expected_version=1))
        await asyncio.sleep(0.3)  # the write now waits for the lock, inside its transaction
        await asyncio.to_thread(own_server.kill)  # pg_ctl stop -m immediate: a crash
        with pytest.raises(StorageError, match="lost the connection to the PostgreSQL database") as info:
            await asyncio.wait_for(waiting, 10)
        assert_secret_kept(info.value, "secret")
        for call in (store.get(G, C), store.history(G, C), store.write(G, C, ("象",), user_id=U, action="set")):
            with pytest.raises(StorageError, match="cannot reach .* check that the server is running") as info:
                await asyncio.wait_for(call, 10)
            assert_secret_kept(info.value, "secret")
        await asyncio.to_thread(own_server.start)  # crash recovery
        assert (await store.get(G, C)).labels == ("犬",)  # the interrupted write never happened
        assert (await store.write(G, C, ("猫",), user_id=U, action="set", expected_version=1)).version == 2
        assert [e.version for e in await store.history(G, C)] == [2, 1]
    finally:
        holder.terminate()
        await store.close()
        await store.close()  # twice is fine
    with pytest.raises(StorageError, match="closed"):
        await store.get(G, C)


async def test_open_waits_for_a_server_that_is_still_starting(own_server, caplog):
    own_server.start()
    url = own_server.create_database()
    await asyncio.to_thread(own_server.stop)
    caplog.set_level(logging.WARNING, logger="wakeru.storage")
    opening = asyncio.create_task(open_store(url))
    await asyncio.sleep(0.8)
    assert not opening.done()  # still retrying
    await asyncio.to_thread(own_server.start)
    store = await asyncio.wait_for(opening, 15)
    try:
        assert isinstance(await store.write(G, C, ("犬",), user_id=U, action="set"), HistoryEntry)
    finally:
        await store.close()
    assert "retrying for up to 10 s (the server may still be starting)" in caplog.text
    assert "secret" not in caplog.text
