"""A label-set writer process for the crash tests (tests/bot/test_storage_crash.py).

    python -m tests.support.storage_writer DBURL --mode bump [--hold-ms 5]
    python -m tests.support.storage_writer DBURL --mode add --name a --count 40 [--wait-for-go]

It opens bot.store.SQLiteLabelStore on DBURL and writes one label set (guild GUILD, channel CHANNEL) with optimistic
concurrency: read the current version, write with expected_version. Every step is printed and flushed at once, so a
process killed with SIGKILL leaves in its stdout pipe exactly what it had done:

    ready                        the store is open (then, with --wait-for-go, it waits for a line on stdin)
    begin V                      about to call write() for version V (bump mode)
    committed V                  write() returned: version V is committed (bump mode)
    committed V LABEL            LABEL was added as version V (add mode)
    conflict SEEN CURRENT        VersionConflict: it read SEEN, the store holds CURRENT; it re-reads and retries
    done CONFLICTS               add mode: all --count labels added

bump: forever, writes version V as the labels ("vV", NAME, …) — their first label names the version, so a reader can
check that a row's labels belong to its version. --hold-ms makes each write pause a random 0…N ms inside its
transaction (after the history row, before the label_sets row), so a kill often lands mid-transaction.
add: adds the labels NAME-0 … NAME-(count-1), one per version, retrying each after a VersionConflict; --think-ms
pauses a random 0…N ms between reading the set and writing it, as a person would, so concurrent writers collide.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from bot.store import LabelStore, SQLiteLabelStore, VersionConflict

GUILD = 1_234_567_890_123_456_789
CHANNEL = 1_111_111_111_111_111_111
USER = 555_555_555_555_555_555


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def bump_labels(version: int, name: str) -> tuple[str, ...]:
    # sizes vary, so some versions span several database pages
    return (f"v{version}", name) + tuple(f"ラベル{version}-{i}" for i in range(version % 7 * 15))


def _hold_inside_transactions(store: LabelStore, hold_ms: float, rng: random.Random) -> None:
    db = store._db
    execute = db.execute

    async def slow_execute(sql, *args, **kw):
        if sql.lstrip().startswith("INSERT INTO label_sets"):  # the history row is already written
            await asyncio.sleep(rng.uniform(0, hold_ms) / 1000)
        return await execute(sql, *args, **kw)

    db.execute = slow_execute


async def bump(store: LabelStore, args: argparse.Namespace) -> None:
    while True:
        current = await store.get(GUILD, CHANNEL)
        seen = current.version if current else 0
        say(f"begin {seen + 1}")
        try:
            result = await store.write(
                GUILD, CHANNEL, bump_labels(seen + 1, args.name), user_id=USER, action="set", expected_version=seen
            )
        except VersionConflict as e:
            say(f"conflict {seen} {e.current_version}")
            continue
        say(f"committed {result.version}")


async def add(store: LabelStore, args: argparse.Namespace) -> None:
    conflicts = 0
    rng = random.Random(args.seed)
    for i in range(args.count):
        label = f"{args.name}-{i}"
        while True:
            current = await store.get(GUILD, CHANNEL)
            seen = current.version if current else 0
            labels = (current.labels if current else ()) + (label,)
            if args.think_ms > 0:  # a person between reading the set and changing it: other writers get in
                await asyncio.sleep(rng.uniform(0, args.think_ms) / 1000)
            try:
                result = await store.write(GUILD, CHANNEL, labels, user_id=USER, action="add", expected_version=seen)
            except VersionConflict as e:
                conflicts += 1
                say(f"conflict {seen} {e.current_version}")
                continue
            say(f"committed {result.version} {label}")
            break
    say(f"done {conflicts}")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="storage URL, e.g. sqlite:////tmp/x.db")
    parser.add_argument("--mode", choices=["bump", "add"], default="bump")
    parser.add_argument("--name", default="w")
    parser.add_argument("--count", type=int, default=20, help="add mode: labels to add")
    parser.add_argument("--hold-ms", type=float, default=0.0, help="pause up to this long inside each transaction")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="add mode: pause up to this long between reading and writing"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wait-for-go", action="store_true", help="after 'ready', wait for a line on stdin")
    args = parser.parse_args(argv)
    store = await SQLiteLabelStore.open(args.url)
    try:
        if args.hold_ms > 0:
            _hold_inside_transactions(store, args.hold_ms, random.Random(args.seed))
        say("ready")
        if args.wait_for_go:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await (bump if args.mode == "bump" else add)(store, args)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
