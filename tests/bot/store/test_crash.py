"""bot.store under SIGKILL and under concurrent writers, against a real SQLite file.

A writer process (tests/support/storage_writer.py) loops writing new versions of one label set and reports every
step on stdout. The test kills it with SIGKILL at random moments once it has committed 3-10 writes: a quarter of
the rounds right after a commit report, a quarter after a random delay, and half after a random delay with the writer
pausing inside its transactions so that kills land mid-transaction. It does this WAKERU_CRASH_KILLS times (20 by
default) on the same file; WAKERU_CRASH_SEED picks other moments. After every kill it opens the file
with plain sqlite3, before any LabelStore touches it again, and checks: integrity_check is "ok", the schema is the
one LabelStore creates, the stored version is the last one the writer reported committed (or one more, when the kill
hit inside write()), the history is exactly versions 1…V with labels that belong to their version, and nothing
committed earlier was lost.

Two writers then add labels to one set concurrently with optimistic read-modify-write: every label either reports
committed is in the final set, and the versions are 1…V with each version exactly the previous set plus one label.

The figures (kills, writes committed, integrity results) are printed in one line; run with -s to see them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.store import SCHEMA_VERSION, SQLiteLabelStore
from tests.support.storage_writer import CHANNEL, GUILD, bump_labels

REPO = Path(__file__).resolve().parents[3]
KILLS = int(os.environ.get("WAKERU_CRASH_KILLS", "20"))
SEED = int(os.environ.get("WAKERU_CRASH_SEED", "20240611"))

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
    pytest.mark.timeout(240),
    pytest.mark.slow,  # writer processes killed mid-write
]


def url_for(path: Path) -> str:
    return f"sqlite:///{path}"


def start_writer(db: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.storage_writer", url_for(db), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class Lines:
    """Line reader over a child's stdout with a timeout (a hung writer fails the test instead of blocking it)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.buf, self.lines, self.eof = proc, b"", [], False
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def _pump(self, timeout: float) -> None:
        if self.eof or not self.sel.select(timeout):
            return
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            self.eof = True
            return
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [line.decode() for line in done]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            if self.eof:
                raise AssertionError(f"writer exited early: {self.lines[-5:]} {self.proc.stderr.read().decode()}")
            left = deadline - time.monotonic()
            assert left > 0, f"writer too slow: {self.lines[-5:]}"
            self._pump(left)

    def drain(self, timeout: float = 30.0) -> list[str]:
        """Everything the child wrote before it died (the pipe keeps it after a SIGKILL)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, "pipe never closed"
            self._pump(max(deadline - time.monotonic(), 0.01))
        self.sel.close()
        return self.lines


def committed(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("committed ")]


def schema(con: sqlite3.Connection) -> list[tuple]:
    return con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def reference_schema(tmp_path: Path) -> list[tuple]:
    path = tmp_path / "reference.db"

    async def create():
        store = await SQLiteLabelStore.open(url_for(path))
        await store.close()

    asyncio.run(create())
    con = sqlite3.connect(path)
    try:
        return schema(con)
    finally:
        con.close()


def inspect(path: Path, expected_schema: list[tuple]) -> tuple[str, int, list[tuple]]:
    """Open the file with plain sqlite3 (this also recovers the WAL) → (integrity, stored version, history rows)."""
    con = sqlite3.connect(path, timeout=10)
    try:
        integrity = ";".join(row[0] for row in con.execute("PRAGMA integrity_check"))
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert schema(con) == expected_schema
        rows = con.execute(
            "SELECT version, labels FROM label_sets WHERE guild_id = ? AND channel_id = ?", (GUILD, CHANNEL)
        ).fetchall()
        history = con.execute(
            "SELECT version, action, labels, reverted FROM label_history "
            "WHERE guild_id = ? AND channel_id = ? ORDER BY version",
            (GUILD, CHANNEL),
        ).fetchall()
        assert con.execute("SELECT COUNT(*) FROM label_sets").fetchone()[0] == len(rows)  # no stray scopes
    finally:
        con.close()
    assert len(rows) == 1, rows
    version, labels = rows[0]
    # the history is exactly 1…version, and the current row is its last entry
    assert [h[0] for h in history] == list(range(1, version + 1))
    assert history[-1][2] == labels
    return integrity, version, history


def test_sigkill_during_label_writes_never_corrupts_the_database(tmp_path, record_property):
    rng = random.Random(SEED)
    db = tmp_path / "crash.db"
    expected_schema = reference_schema(tmp_path)
    stored = 0  # version in the file after the previous kill
    writes = in_write = unreported = mid_hold = 0
    integrity_ok = []
    start = time.monotonic()
    for round_ in range(KILLS):
        style = rng.choice(["after-report", "random", "random-hold", "random-hold"])
        args = ["--mode", "bump", "--name", f"round{round_}", "--seed", str(rng.randrange(2**32))]
        if style == "random-hold":
            args += ["--hold-ms", "3"]
        proc = start_writer(db, *args)
        reader = Lines(proc)
        try:
            need = rng.randint(3, 10)
            reader.wait_for(lambda lines: len(committed(lines)) >= need)
            if style != "after-report":
                time.sleep(rng.uniform(0, 0.008))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        lines = reader.drain()
        close_pipes(proc)
        assert lines[0] == "ready", lines[:3]
        done = committed(lines)
        # the writer continued from what the file held: nothing committed before was lost
        assert done == list(range(stored + 1, stored + 1 + len(done))), (stored, done[:3])
        last = done[-1]
        killed_in_write = lines[-1].startswith("begin ")

        integrity, version, history = inspect(db, expected_schema)
        integrity_ok.append(integrity == "ok")
        assert integrity == "ok", f"round {round_}: integrity_check says {integrity}"
        if killed_in_write:
            # killed inside write(): that write either committed entirely or not at all
            assert lines[-1] == f"begin {last + 1}"
            assert version in (last, last + 1), (last, version)
        else:
            assert version == last, (last, version)
        for v, action, labels, reverted in history:
            assert action == "set" and not reverted
            assert json.loads(labels)[0] == f"v{v}"  # each row holds the labels written for its version
        assert tuple(json.loads(history[-1][2])) == bump_labels(version, json.loads(history[-1][2])[1])

        writes += len(done)
        in_write += killed_in_write
        unreported += version - last
        mid_hold += style == "random-hold" and killed_in_write
        stored = version
    elapsed = time.monotonic() - start

    # the file still works for LabelStore after all that: one more write on top of the last version
    async def reopen():
        store = await SQLiteLabelStore.open(url_for(db))
        try:
            return await store.write(GUILD, CHANNEL, ("after",), user_id=None, action="set", expected_version=stored)
        finally:
            await store.close()

    assert asyncio.run(reopen()).version == stored + 1
    summary = dict(
        kills=KILLS,
        writes_committed=writes + unreported,
        reported=writes,
        committed_but_unreported=unreported,
        kills_inside_write=in_write,
        kills_inside_held_tx=mid_hold,
        final_version=stored,
        integrity_ok=sum(integrity_ok),
        integrity_checks=len(integrity_ok),
        seconds=round(elapsed, 1),
        seed=SEED,
    )
    for key, value in summary.items():
        record_property(key, value)
    print(
        f"\nstorage SIGKILL test: {KILLS} kills, {writes + unreported} writes committed "
        f"({unreported} committed but killed before reporting), {in_write} kills inside write(), "
        f"integrity_check ok {sum(integrity_ok)}/{len(integrity_ok)}, final version {stored}, "
        f"{elapsed:.1f} s, seed {SEED}"
    )
    assert sum(integrity_ok) == KILLS
    assert writes >= 3 * KILLS


def test_two_concurrent_writers_lose_no_update(tmp_path, record_property):
    db = tmp_path / "concurrent.db"
    expected_schema = reference_schema(tmp_path)
    count = 40
    procs = {
        name: start_writer(
            db,
            "--mode",
            "add",
            "--name",
            name,
            "--count",
            str(count),
            "--think-ms",
            "2",
            "--seed",
            str(seed),
            "--wait-for-go",
        )
        for seed, name in enumerate(("a", "b"))
    }
    try:
        readers = {name: Lines(proc) for name, proc in procs.items()}
        for reader in readers.values():
            reader.wait_for(lambda lines: "ready" in lines)
        for proc in procs.values():  # both start writing at the same moment
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for name, proc in procs.items():
            readers[name].drain(timeout=60)
            assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            close_pipes(proc)

    reported: dict[int, str] = {}
    conflicts = 0
    for name, reader in readers.items():
        lines = reader.lines
        assert lines[-1].startswith("done "), lines[-3:]
        conflicts += int(lines[-1].split()[1])
        mine = [line.split() for line in lines if line.startswith("committed ")]
        assert [label for _, _, label in mine] == [f"{name}-{i}" for i in range(count)]  # all, in order
        versions = [int(version) for _, version, _ in mine]
        assert versions == sorted(set(versions))  # each writer's own commits get increasing versions
        for _, version, label in mine:
            assert int(version) not in reported, f"version {version} reported by both writers"
            reported[int(version)] = label

    integrity, version, history = inspect(db, expected_schema)
    assert integrity == "ok"
    # versions strictly sequential, one per reported commit, none missing
    assert version == 2 * count and sorted(reported) == list(range(1, version + 1))
    previous: list[str] = []
    for v, action, labels, reverted in history:
        labels = json.loads(labels)
        assert action == "add" and not reverted
        assert labels == previous + [reported[v]], f"version {v} lost an update"  # read-modify-write, nothing lost
        previous = labels
    assert sorted(previous) == sorted(reported.values())  # every committed label is in the final set
    record_property("concurrent_commits", len(reported))
    record_property("concurrent_conflicts", conflicts)
    print(
        f"\nstorage concurrent writers: 2 writers, {len(reported)} labels committed, {conflicts} version "
        f"conflicts retried, final version {version}, integrity_check {integrity}"
    )
