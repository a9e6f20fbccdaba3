"""Backfill rate: `python -m tests.support.bench_backfill [--images N] [--model DIR | --stub] [--json]`.

A benchmark, not a test: the real `python -m bot` indexes a channel history seeded in the local fake Discord
(tests/support/fake_discord.py; Discord itself cannot be reached here), with the history route rate-limited
the way Discord limits it (X-RateLimit headers that discord.py follows; 429 for a client that does not). Reports
images per minute from the command to the final progress edit, the history requests made and any 429s.

It lives with the test support because it needs the fake Discord; see docs/performance.md for figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.support import flows, shapes
from tests.support.bot_process import BotProcess
from tests.support.fake_discord import FakeDiscord


def run(images: int, model: Path, stub: bool, history_per_second: float, text_every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="wakeru-bench-backfill-") as tmp, FakeDiscord() as fake:
        workdir = Path(tmp)
        now = dt.datetime.now(dt.timezone.utc)
        seeded = []
        for i in range(images):
            label = shapes.CLASSES[i % len(shapes.CLASSES)]
            seeded.append(("member", f"b{i}.jpg", flows.jpeg(label, i), now - dt.timedelta(minutes=10 * i + 1)))
            if text_every and i % text_every == 0:  # conversation between the pictures, as in a real channel
                seeded.extend(
                    ("member", None, None, now - dt.timedelta(minutes=10 * i + 2, seconds=s)) for s in range(5)
                )
        fake.seed_history(fake.other_channel_id, seeded)
        fake.history_rate_limit(per_second=history_per_second)
        bot = BotProcess(
            fake,
            model,
            workdir,
            worker="stub" if stub else "real",
            WAKERU_DISCORD__MODERATOR_ROLE_IDS=f"[{fake.moderator_role_id}]",
            WAKERU_INDEX__BACKFILL_MAX_DAYS="3650",
        )
        bot.start()
        try:
            started = time.monotonic()
            options = [{"type": 1, "name": "backfill", "options": [{"type": 4, "name": "days", "value": 3650}]}]
            fake.interact("index", options=options, user="moderator", channel_id=fake.other_channel_id).wait_final(
                timeout=60
            )
            progress = fake.wait_for_message(
                lambda m: m["kind"] == "channel" and m["channel_id"] == fake.other_channel_id, since=0, timeout=60
            )
            fake.wait_for(
                lambda: any("登録しました" in (e["content"] or "") for e in fake.edits_of(progress["id"])),
                timeout=3600,
                what="the backfill to finish",
            )
            elapsed = time.monotonic() - started
            final = fake.edits_of(progress["id"])[-1]["content"]
            done = int(re.search(r"(\d+) / \d+", final).group(1))
            return {
                "images": done,
                "messages": len(seeded),
                "seconds": round(elapsed, 1),
                "images_per_minute": round(done / elapsed * 60, 1),
                "history_requests": fake.request_count("GET /channels/{channel}/messages"),
                "history_limit_per_second": history_per_second,
                "responses_429": sum(1 for r in fake.requests if r.get("status") == 429),
                "worker": "stub" if stub else str(model),
            }
        finally:
            bot.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.bench_backfill", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", type=Path, help="a checkpoint directory for the real worker")
    parser.add_argument("--stub", action="store_true", help="the torch-free stand-in worker (measures the bot side)")
    parser.add_argument("--history-per-second", type=float, default=5.0, help="the history route's rate limit")
    parser.add_argument("--text-every", type=int, default=1, help="5 text messages every N pictures (0: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.stub:
        from tests.support.stub_worker import make_model_dir

        model = make_model_dir(Path(tempfile.mkdtemp(prefix="wakeru-stub-")) / "stub-model")
    elif args.model is None:
        parser.error("give --model DIR (e.g. from python -m model_worker make-checkpoint) or --stub")
    else:
        model = args.model
    report = run(args.images, model, args.stub, args.history_per_second, args.text_every)
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
