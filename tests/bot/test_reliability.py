"""Fault injection against the real processes: `python -m bot` (discord.py + a spawned worker)
talking to the local fake Discord, with a real SQLite file.

Each test injects one fault (a killed worker, an image that crashes it, a model that cannot
load, a deadline, a flood, a dropped or invalidated gateway, REST 5xx/429, SIGTERM, a killed
bot mid-write, a full or read-only disk) and asserts what users see. Figures go to the file
named by WAKERU_RELIABILITY_REPORT (JSON) when it is set; docs/reliability.md quotes one run.

The model that cannot load runs the real model worker (its loader's own failure, end to end). The
others run the same bot with the torch-free stand-in worker (tests/support/stub_worker.py: the real
pipe end, decoder and fault injection around a rule-based "model"), which starts in a fraction of
the time: what they test is the bot and its supervisor, and several of them start many workers
(every kill restarts one) or many bots. The real worker classifies through the local transport in
tests/bot/transport/test_local.py and through Redis in tests/bot/transport/test_redis_streams.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import flows, shapes
from tests.support.bot_process import BotProcess, memory_kib
from tests.support.fake_discord import FakeDiscord, make_user

pytestmark = pytest.mark.slow  # bot processes, each run for seconds

FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("WAKERU_RELIABILITY_REPORT")
    if path and FIGURES:
        old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        Path(path).write_text(json.dumps({**old, **FIGURES}, indent=2, ensure_ascii=False))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(fake, channel_id, label: str, seed: int, author="member") -> dict:
    return fake.post_message(
        channel_id, attachments=[(f"{label}-{seed}.png", flows.png(label, seed), "image/png")], author=author
    )


def _wait_replies(fake, posts: list[dict], since: int, timeout: float = 120) -> dict[str, dict]:
    """post id → the bot's reply to it; fails if any post is left unanswered."""
    wanted = {p["id"] for p in posts}

    def answered() -> dict[str, dict] | None:
        found = {}
        for m in fake.sent_messages[since:]:
            ref = m["message_reference"]
            if m["kind"] == "channel" and ref and str(ref["message_id"]) in wanted:
                found.setdefault(str(ref["message_id"]), m)
        return found if len(found) == len(wanted) else None

    try:
        return fake.wait_for(answered, timeout=timeout, what="a reply to every post")
    except AssertionError:
        got = answered() or {}
        raise AssertionError(f"{len(wanted) - len(got)} of {len(wanted)} posts got no reply") from None


def _outcome(reply: dict) -> str:
    embed = reply["embeds"][0]
    return flows.error_code(embed) or flows.top_label(embed)


def _json_logs(bot: BotProcess) -> list[dict]:
    out = []
    for line in bot.log_path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------- a worker that misbehaves


@pytest.fixture(scope="module")
def faulty(stub_model, tmp_path_factory):
    """One bot whose worker is slow (500 ms per batch, so kills land mid-batch) and dies on the
    label 💥; JSON logs; metrics and /healthz on a local port."""
    workdir = tmp_path_factory.mktemp("faulty")
    port = _free_port()
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            workdir,
            worker="stub",
            WAKERU_FAULTS="batch_delay_ms=500,crash_label=💥",
            WAKERU_WORKER__MAX_BATCH="4",
            WAKERU_WORKER__RESTART_BACKOFF_S="0.2",
            # crashes in a row add up over the tests of this module: the doubling stops at 1 s
            WAKERU_WORKER__RESTART_BACKOFF_MAX_S="1.0",
            WAKERU_SERVICE__LOG_FORMAT="json",
            WAKERU_SERVICE__METRICS_PORT=str(port),
        )
        bot.port = port
        bot.start()
        flows.set_labels(fake, flows.LABELS)
        try:
            yield fake, bot
        finally:
            assert bot.stop() == 0, bot.log()


def _metrics(bot) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{bot.port}/metrics", timeout=5) as r:
        return r.read().decode()


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")) or (not want and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigkill_mid_batch_restarts_the_worker_and_every_post_is_answered(faulty):
    fake, bot = faulty
    before = _metric(_metrics(bot), "wakeru_worker_restarts_total")
    first_pid = bot.worker_pid()
    mark = fake.mark()
    posts = [_post(fake, fake.channel_id, label, i) for i, label in enumerate(shapes.CLASSES * 2)]

    def replied() -> int:
        return sum(1 for m in fake.sent_messages[mark:] if m["message_reference"])

    # every post is either answered already or sent to the worker, and a batch is in the model
    bot.wait_state(
        lambda s: s.get("in_flight", 0) >= 4 and s["in_flight"] + replied() == len(posts),
        timeout=30,
        what="every image in the worker or answered",
    )
    killed_at = time.monotonic()
    os.kill(first_pid, signal.SIGKILL)
    down = bot.wait_state(lambda s: s["worker"] != "ready", timeout=5, what="the crash noticed")
    noticed_s = time.monotonic() - killed_at
    # while it is down, a new post waits for the new worker (typing) and is classified, not refused
    during = _post(fake, fake.channel_id, "赤い丸", 0)
    bot.wait_state(lambda s: s["worker"] == "ready" and s["worker_pid"] != first_pid, timeout=60, what="a new worker")
    back_s = time.monotonic() - killed_at
    replies = _wait_replies(fake, posts, mark)
    outcomes = [_outcome(replies[p["id"]]) for p in posts]
    assert outcomes == list(shapes.CLASSES * 2)  # each answered, with its own right label
    assert noticed_s < 2.0, down
    during_reply = _wait_replies(fake, [during], mark)[during["id"]]
    assert _outcome(during_reply) == "赤い丸"
    text = _metrics(bot)
    assert _metric(text, "wakeru_worker_restarts_total") == before + 1
    assert _metric(text, "wakeru_requests_total", source="post", outcome="ok") >= len(posts)
    assert 'wakeru_worker_state{wakeru_worker_state="ready"} 1.0' in text
    FIGURES["worker_kill"] = {
        "posts": len(posts),
        "answered": len(replies),
        "right_label": len(outcomes),
        "lost": len(posts) - len(replies),
        "noticed_s": round(noticed_s, 2),
        "ready_again_s": round(back_s, 2),
        "posted_during_restart": _outcome(during_reply),
    }


def test_repeated_kills_lose_nothing(faulty):
    """Three kills in a row under steady traffic: every image is answered (right label or, for one
    caught in two deaths, a clear error), restarts back off, and nothing is left hanging."""
    fake, bot = faulty
    mark, posts, kills = fake.mark(), [], 0
    stop = threading.Event()

    def killer():
        nonlocal kills
        for _ in range(3):
            try:  # a kill once the new worker has served for a while and holds images
                bot.wait_state(lambda s: s["worker"] == "ready", timeout=60)
                time.sleep(1.5)
                state = bot.wait_state(lambda s: s["worker"] == "ready" and s.get("in_flight", 0) >= 2, timeout=60)
            except AssertionError:
                return
            os.kill(state["worker_pid"], signal.SIGKILL)
            kills += 1
            time.sleep(0.5)
        stop.set()

    thread = threading.Thread(target=killer)
    thread.start()
    i = 0
    while not stop.is_set() and i < 120:
        # the twelve pictures of the test above: the (deterministically trained) model gets each right
        posts.append(_post(fake, fake.channel_id, shapes.CLASSES[i % 6], i % 12))
        i += 1
        time.sleep(0.15)
    thread.join()
    replies = _wait_replies(fake, posts, mark, timeout=180)
    outcomes = [_outcome(replies[p["id"]]) for p in posts]
    wrong = [
        (o, shapes.CLASSES[i % 6]) for i, o in enumerate(outcomes) if o not in (shapes.CLASSES[i % 6], "worker_crashed")
    ]
    assert kills == 3 and not wrong, wrong  # nothing "unavailable": posts made during restarts waited
    # images held at a kill are sent again, and posts made while a worker restarted wait for it, so
    # every post gets its label; only a resent image caught in the next kill as well may be refused
    right = sum(o == shapes.CLASSES[i % 6] for i, o in enumerate(outcomes))
    assert outcomes.count("worker_crashed") <= kills - 1 and right >= len(posts) - (kills - 1), outcomes
    FIGURES["repeated_kills"] = {
        "kills": kills,
        "posts": len(posts),
        "answered": len(replies),
        "lost": len(posts) - len(replies),
        "right_label": sum(o == shapes.CLASSES[i % 6] for i, o in enumerate(outcomes)),
        "unavailable": outcomes.count("unavailable"),
        "crashed": outcomes.count("worker_crashed"),
    }


def test_an_image_that_crashes_the_worker_twice_gets_an_error_not_a_loop(faulty):
    fake, bot = faulty
    restarts = bot.state()["restarts"]
    rec = fake.interact(
        "classify",
        options=[{"type": 3, "name": "labels", "value": "赤い丸、青い丸、💥"}],
        attachments={"image": ("poison.png", flows.png("赤い丸", 5), "image/png")},
    )
    final = rec.wait_final(timeout=90)
    assert flows.error_code(final["embeds"][0]) == "worker_crashed"
    assert "2回停止" in final["embeds"][0]["description"]  # the user's (ja) locale
    state = bot.wait_state(lambda s: s["worker"] == "ready", timeout=60, what="the worker back")
    assert state["restarts"] == restarts + 2
    after = flows.post_and_wait(fake, fake.channel_id, [("ok.png", flows.png("青い四角", 3), "image/png")])
    assert _outcome(after) == "青い四角"


def test_request_ids_follow_an_image_from_the_event_to_the_worker_and_back(faulty):
    fake, bot = faulty
    reply = flows.post_and_wait(fake, fake.channel_id, [("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")])
    assert _outcome(reply) == "corrupt_image"
    logs = _json_logs(bot)
    bot_line = next(e for e in reversed(logs) if e["process"] == "bot" and e.get("outcome") == "corrupt_image")
    request_id = bot_line["request_id"]
    event_id = request_id.rsplit("-", 1)[0]
    worker_line = next(e for e in logs if e["process"] == "worker" and e.get("request_id") == request_id)
    assert worker_line["outcome"] == "corrupt_image"
    event_line = next(e for e in logs if e["process"] == "bot" and e.get("request_id") == event_id)
    assert "image post" in event_line["message"]


def test_healthz_reports_the_worker_and_the_health_command_uses_it(faulty):
    fake, bot = faulty
    with urllib.request.urlopen(f"http://127.0.0.1:{bot.port}/healthz", timeout=5) as r:
        health = json.loads(r.read())
    assert r.status == 200 and health["worker"] == "ready" and health["status"] == "ok"
    out = bot.run("health")
    assert out.returncode == 0 and "worker ready" in out.stdout, out
    text = _metrics(bot)
    for name in (
        "wakeru_queue_depth",
        "wakeru_batch_size_bucket",
        "wakeru_latency_seconds_bucket",
        "wakeru_requests_total",
        "wakeru_worker_restarts_total",
        "wakeru_label_set_changes_total",
        "wakeru_gateway_sessions_total",
    ):
        assert name in text, name
    assert _metric(text, "wakeru_label_set_changes_total", action="set") >= 1
    assert 'stage="model"' in text and 'stage="decode"' in text and 'stage="queue"' in text


def test_gateway_drop_resumes_and_an_invalidated_session_identifies_again(faulty):
    fake, bot = faulty
    figures = {}
    for fault in ("drop", "invalidate"):
        since = time.monotonic()
        if fault == "drop":
            resumes = fake.resume_count()
            assert fake.disconnect_all(4000) >= 1
        else:
            identifies = fake.identify_count()
            assert fake.invalidate_sessions() >= 1
        figures[f"{fault}_reconnect_s"] = round(fake.wait_reconnected(since, timeout=30), 3)
        if fault == "drop":
            assert fake.resume_count() > resumes
        else:
            assert fake.identify_count() > identifies
        reply = flows.post_and_wait(fake, fake.channel_id, [("after.png", flows.png("緑の四角", 4), "image/png")])
        assert _outcome(reply) == "緑の四角"
    FIGURES["gateway"] = figures


def test_rest_5xx_and_429_are_retried_without_duplicate_replies(faulty):
    fake, bot = faulty
    path = rf"channels/{fake.channel_id}/messages"
    for statuses, processed in (([502], True), ([500, 502], False), ([429], False)):
        mark = fake.mark()
        fake.inject_rest_faults("POST", path, statuses, processed=processed, retry_after=0.3)
        posted = _post(fake, fake.channel_id, "青い丸", 11)
        reply = fake.wait_for_message(flows.replies_to(fake, posted, mark), since=mark, timeout=60)
        assert _outcome(reply) == "青い丸"
        # the sentinel: the bot logs the reply once its send (retries included) has returned
        fake.wait_for(
            lambda: f"replied to message {posted['id']}" in bot.full_log(),
            timeout=30,
            what="the reply's send to finish",
        )
        to_post = [
            m
            for m in fake.sent_messages[mark:]
            if m["message_reference"] and str(m["message_reference"]["message_id"]) == posted["id"]
        ]
        stored = [
            m
            for m in list(fake.channel_messages.values())
            if str((m.get("message_reference") or {}).get("message_id")) == posted["id"]
        ]
        assert len(to_post) == 1 and len(stored) == 1, (statuses, processed, len(to_post), len(stored))
    assert len(fake.injected_faults) >= 4


def test_an_answer_that_outlives_its_interaction_token_is_posted_in_the_channel(faulty):
    fake, bot = faulty
    mark = fake.mark()
    rec = fake.interact("classify", attachments={"image": ("late.png", flows.png("緑の丸", 6), "image/png")})
    assert rec.wait_response()["type"] == 5  # deferred
    fake.expire_interactions()  # as if 15 minutes had passed
    message = fake.wait_for_message(lambda m: m["kind"] == "channel" and m["embeds"], since=mark, timeout=60)
    assert f"<@{fake.member_id}>" in message["content"] and _outcome(message) == "緑の丸"
    assert message["allowed_mentions"] == {"parse": []} or not message["allowed_mentions"].get("parse")


# ---------------------------------------------------------------- model loading


def test_a_post_and_a_command_made_while_the_model_loads_are_classified_with_typing(stub_model, tmp_path):
    """The bot is connected before its model is loaded (every start, every restart): images that
    arrive meanwhile wait for it, with the typing indicator running, instead of "unavailable"."""
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            tmp_path,
            worker="stub",
            WAKERU_FAULTS="load_delay_ms=7000",
            WAKERU_SERVICE__METRICS_PORT=str(_free_port()),
        )
        bot.start(wait=False)
        try:
            fake.wait_ready(timeout=60)
            flows.set_labels(fake, flows.LABELS)  # the database needs no model
            assert bot.state()["worker"] == "starting"
            mark, posted_at = fake.mark(), time.monotonic()
            post = _post(fake, fake.channel_id, "青い四角", 1)
            command = fake.interact(
                "classify",
                channel_id=fake.other_channel_id,
                options=[{"type": 3, "name": "labels", "value": flows.LABELS}],
                attachments={"image": ("c.png", flows.png("緑の丸", 2), "image/png")},
            )
            assert command.wait_response()["type"] == 5  # deferred at once, as always
            reply = _wait_replies(fake, [post], mark, timeout=90)[post["id"]]
            waited_s = time.monotonic() - posted_at
            assert _outcome(reply) == "青い四角"
            assert flows.top_label(command.wait_final(timeout=60)["embeds"][0]) == "緑の丸"
            assert bot.state()["worker"] == "ready"
            # typing while it waited: discord.py re-sends it every 5 s, the wait was longer than that
            assert waited_s > 5 and fake.typing.count(fake.channel_id) >= 2, (waited_s, fake.typing)
            FIGURES["posted_while_loading"] = {
                "post": _outcome(reply),
                "answered_after_s": round(waited_s, 1),
                "typing_requests": fake.typing.count(fake.channel_id),
            }
        finally:
            assert bot.stop() == 0


# ---------------------------------------------------------------- deadlines, load failure


def test_a_deadline_answers_in_time_and_stops_typing(stub_model, tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            tmp_path,
            worker="stub",
            WAKERU_FAULTS="batch_delay_ms=4000",
            WAKERU_WORKER__REQUEST_TIMEOUT_S="1.0",
        )
        bot.start()
        try:
            flows.set_labels(fake, flows.LABELS)
            started = time.monotonic()
            reply = flows.post_and_wait(fake, fake.channel_id, [("slow.png", flows.png("赤い丸"), "image/png")])
            took = time.monotonic() - started
            assert _outcome(reply) == "deadline_exceeded" and took < 3.0 + 2.0, took
            typing = fake.typing.count(fake.channel_id)
            # A leaked typing context would type here again 5 s after it started (when the post came in).
            # The sentinels: a /classify and a post in the other channel, each answered at its deadline,
            # so more than one typing period has passed since the post by the time both are answered.
            rec = fake.interact(
                "classify",
                channel_id=fake.other_channel_id,
                attachments={"image": ("slow.png", flows.png("赤い丸"), "image/png")},
            )
            final = rec.wait_final(timeout=30)
            assert flows.error_code(final["embeds"][0]) == "deadline_exceeded"
            flows.set_labels(fake, flows.LABELS, channel_id=fake.other_channel_id)
            other = flows.post_and_wait(fake, fake.other_channel_id, [("b.png", flows.png("青い丸"), "image/png")])
            assert _outcome(other) == "deadline_exceeded" and time.monotonic() - started > 5.5
            assert fake.typing.count(fake.channel_id) == typing, "the typing indicator was left running"
            FIGURES["deadline"] = {"request_timeout_s": 1.0, "answered_after_s": round(took, 2)}
        finally:
            assert bot.stop() == 0


def test_a_model_that_cannot_load_leaves_the_bot_up_answering_unavailable(tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake, tmp_path / "no-such-model", tmp_path, WAKERU_SERVICE__METRICS_PORT="0"
        )  # `health` reads the heartbeat file here
        bot.start(wait=False)
        try:
            bot.wait_state(lambda s: s.get("worker") == "failed", timeout=120, what="the load failure")
            assert "no-such-model does not exist; check model.id" in bot.log()
            fake.wait_ready()
            flows.set_labels(fake, flows.LABELS)
            reply = flows.post_and_wait(fake, fake.channel_id, [("a.png", flows.png("赤い丸"), "image/png")])
            assert _outcome(reply) == "unavailable"
            # members learn there is no model; the path (an operator's file) stays in the log and health
            assert "could not be loaded" in reply["embeds"][0]["description"]
            assert "no-such-model" not in json.dumps(reply) and str(tmp_path) not in json.dumps(reply)
            health = bot.run("health")
            assert health.returncode == 1 and "no-such-model" in health.stderr
            assert bot.process.poll() is None  # still up
        finally:
            assert bot.stop() == 0


# ---------------------------------------------------------------- flood


def _noisy_jpeg(label: str) -> bytes:
    """A 1024×768 photo-sized JPEG of a shape: noise keeps it near 0.9 MB."""
    import random

    import numpy as np
    from PIL import Image

    picture = np.asarray(shapes.draw(label, (1024, 768), random.Random(3)), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-50, 51, picture.shape)
    return shapes.encode(Image.fromarray(np.clip(picture + noise, 0, 255).astype(np.uint8)), "JPEG", quality=98)


def test_a_burst_of_ten_times_capacity_is_answered_busy_fast_and_memory_stays_bounded(stub_model, tmp_path):
    """Queue of 32 places and 16 MiB of image bytes, a worker doing about 13 images/s (300 ms per
    batch of 4): 200 posts of a 0.9 MB photo (fetched whole: the media-proxy rendition is turned
    off here, the worst case) from 200 members at once, far beyond ten times what the worker can
    take. Every post gets an answer, those beyond the budget an immediate "busy"; the bytes bound
    binds before the count (18 × 0.9 MB fit in 16 MiB); memory of both processes stays bounded
    (200 × 0.9 MB would be 180 MB held); the backlog drains."""
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            tmp_path,
            worker="stub",
            WAKERU_FAULTS="batch_delay_ms=300",
            WAKERU_WORKER__QUEUE_SIZE="32",
            WAKERU_WORKER__MAX_BATCH="4",
            WAKERU_ATTACHMENTS__RESIZE_ABOVE_BYTES="100000000",
            WAKERU_IMAGES__MAX_BYTES=str(8 * 1024 * 1024),
            WAKERU_WORKER__QUEUE_MAX_BYTES=str(16 * 1024 * 1024),
        )
        bot.start()
        try:
            flows.set_labels(fake, flows.LABELS)
            flows.post_and_wait(fake, fake.channel_id, [("warm.png", flows.png("赤い丸"), "image/png")])
            worker = bot.worker_pid()
            before = {"bot": memory_kib(bot.process.pid)["VmRSS"], "worker": memory_kib(worker)["VmRSS"]}
            image = _noisy_jpeg("青い丸")
            assert 700_000 < len(image) < 1_000_000  # under attachments.resize_above_bytes here: fetched whole
            mark, posts, started = fake.mark(), [], time.monotonic()
            for i in range(200):
                user = make_user(5_000_000 + i, f"user{i}")
                posts.append(
                    fake.post_message(fake.channel_id, author=user, attachments=[(f"{i}.jpg", image, "image/jpeg")])
                )
            burst_s = time.monotonic() - started
            replies = _wait_replies(fake, posts, mark, timeout=180)
            drained_s = time.monotonic() - started
            outcomes = [_outcome(replies[p["id"]]) for p in posts]
            peak = {"bot": memory_kib(bot.process.pid)["VmHWM"], "worker": memory_kib(worker)["VmHWM"]}
            assert set(outcomes) <= {"青い丸", "queue_full"}, set(outcomes)
            # the first 18 fill the byte budget (16 MiB / 0.9 MB): the rest of the burst is "busy" at once
            busy_messages = [
                replies[p["id"]]["embeds"][0]["description"]
                for p in posts
                if _outcome(replies[p["id"]]) == "queue_full"
            ]
            assert outcomes.count("queue_full") >= 140 and 18 <= outcomes.count("青い丸") <= 60, outcomes
            assert any("MiB" in m for m in busy_messages)
            growth = {k: (peak[k] - before[k]) // 1024 for k in peak}
            assert growth["bot"] < 60 and growth["worker"] < 300, growth  # MiB
            state = bot.wait_state(lambda s: s.get("in_flight") == 0, timeout=30, what="the backlog drained")
            assert state["worker"] == "ready"
            after = flows.post_and_wait(fake, fake.channel_id, [("after.png", flows.png("赤い四角", 2), "image/png")])
            assert _outcome(after) == "赤い四角"
            FIGURES["flood"] = {
                "posts": len(posts),
                "sent_in_s": round(burst_s, 2),
                "answered": len(replies),
                "lost": len(posts) - len(replies),
                "classified": outcomes.count("青い丸"),
                "busy": outcomes.count("queue_full"),
                "all_answered_after_s": round(drained_s, 1),
                "rss_before_mib": {k: v // 1024 for k, v in before.items()},
                "peak_rss_mib": {k: v // 1024 for k, v in peak.items()},
            }
        finally:
            assert bot.stop() == 0


def test_rate_limits_per_member_and_per_channel(stub_model, tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            tmp_path,
            worker="stub",
            WAKERU_LIMITS__USER_PER_MINUTE="6",
            WAKERU_LIMITS__USER_BURST="3",
            WAKERU_LIMITS__CHANNEL_PER_MINUTE="1",
            WAKERU_LIMITS__CHANNEL_BURST="5",
        )
        bot.start()
        try:
            flows.set_labels(fake, flows.LABELS)
            flows.set_labels(fake, flows.LABELS, channel_id=fake.other_channel_id)
            mark = fake.mark()
            posts = [_post(fake, fake.channel_id, "赤い丸", i) for i in range(5)]
            fake.wait_for(
                lambda: len([m for m in fake.sent_messages[mark:] if m["kind"] == "channel"]) >= 4,
                timeout=60,
                what="3 answers and one slow-down note",
            )
            # the sentinel: another member's post elsewhere, answered after the five were handled
            other = flows.post_and_wait(
                fake, fake.other_channel_id, [("o.png", flows.png("緑の丸"), "image/png")], author="owner"
            )
            assert _outcome(other) == "緑の丸"  # another channel is not affected
            sent = [
                m for m in fake.sent_messages[mark:] if m["kind"] == "channel" and m["channel_id"] == fake.channel_id
            ]
            answers = [m for m in sent if m["embeds"]]
            notes = [m for m in sent if not m["embeds"]]
            assert len(answers) == 3 and len(notes) == 1, sent  # told once, then quiet
            assert "1分あたり6枚まで" in notes[0]["content"]
            assert str(notes[0]["message_reference"]["message_id"]) in {p["id"] for p in posts}
            rec = fake.interact(
                "classify", attachments={"image": ("x.png", flows.png("赤い丸"), "image/png")}, locale="en-US"
            )
            response = rec.wait_response()
            assert response["type"] == 4 and response["ephemeral"]  # private, at once
            assert "faster than 6 a minute" in response["content"]
            # the channel's own limit: other members, same channel (2 of its 5 are left)
            mark = fake.mark()
            for i, who in enumerate(("moderator", "owner", "moderator")):
                _post(fake, fake.channel_id, "青い丸", 50 + i, author=who)
            fake.wait_for(
                lambda: len([m for m in fake.sent_messages[mark:] if m["kind"] == "channel"]) >= 3,
                timeout=60,
                what="two answers and a channel note",
            )
            sent = [m for m in fake.sent_messages[mark:] if m["kind"] == "channel"]
            assert sum(bool(m["embeds"]) for m in sent) == 2
            assert any("このチャンネルの画像が多すぎます" in (m["content"] or "") for m in sent)
        finally:
            assert bot.stop() == 0


# ---------------------------------------------------------------- graceful shutdown


@pytest.mark.parametrize("grace", [30.0, 0.5])
def test_sigterm_finishes_or_answers_in_flight_work_then_exits_zero(stub_model, tmp_path, grace):
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            stub_model,
            tmp_path,
            worker="stub",
            WAKERU_FAULTS="batch_delay_ms=1500",
            WAKERU_WORKER__MAX_BATCH="2",
            WAKERU_SERVICE__SHUTDOWN_GRACE_S=str(grace),
            WAKERU_SERVICE__METRICS_PORT=str(_free_port()),
        )  # live state from /healthz
        bot.start()
        flows.set_labels(fake, flows.LABELS)
        worker = bot.worker_pid()
        mark = fake.mark()
        posts = [_post(fake, fake.channel_id, label, i) for i, label in enumerate(shapes.CLASSES[:4])]
        replied = lambda: sum(1 for m in fake.sent_messages[mark:] if m["message_reference"])  # noqa: E731
        bot.wait_state(
            lambda s: s.get("in_flight", 0) >= 2 and s["in_flight"] + replied() == len(posts),
            timeout=30,
            what="every image in flight or answered",
        )
        started = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        refused = None
        if grace > 10:  # the gateway stays up while in-flight work finishes: new commands are turned away
            time.sleep(0.3)
            refused = fake.interact("classify", attachments={"image": ("new.png", flows.png("赤い丸"), "image/png")})
        code = bot.process.wait(grace + 30)
        took = time.monotonic() - started
        assert code == 0, bot.log()
        replies = _wait_replies(fake, posts, mark, timeout=5)
        outcomes = [_outcome(replies[p["id"]]) for p in posts]
        if grace > 10:
            assert outcomes == list(shapes.CLASSES[:4])  # finished within the grace period
        else:
            assert "unavailable" in outcomes and took < grace + 10
        if refused is not None:
            response = refused.wait_response(timeout=5)
            assert response["ephemeral"] and "再起動中" in response["content"]
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)  # the worker is gone too
        assert sqlite3.connect(tmp_path / "wakeru.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        FIGURES[f"sigterm_grace_{grace:g}s"] = {
            "in_flight": len(posts),
            "answered": len(replies),
            "classified": sum(o in shapes.CLASSES for o in outcomes),
            "exit_code": code,
            "exit_after_s": round(took, 2),
        }


# ---------------------------------------------------------------- storage


def test_bot_killed_during_label_writes_keeps_an_intact_database(stub_model, tmp_path):
    """SIGKILL the whole bot while a moderator keeps setting labels, 5 times; each restart finds
    a database that passes integrity_check and holds at least every confirmed version."""
    db = tmp_path / "wakeru.db"
    with FakeDiscord() as fake:
        bot = BotProcess(fake, stub_model, tmp_path, worker="stub")
        confirmed = last_confirmed = 0
        results = []
        for round_ in range(5):
            bot.start()
            stop = threading.Event()

            def final_answer(rec, timeout: float = 5.0) -> dict:
                """rec.wait_final(timeout), given up as soon as the bot is dead (stop), not at the timeout."""
                end = time.monotonic() + timeout
                while True:
                    try:
                        return rec.wait_final(timeout=0.2)
                    except TimeoutError:
                        if stop.is_set() or time.monotonic() >= end:
                            raise

            def writer():
                nonlocal confirmed
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        rec = fake.interact(
                            "labels",
                            user="moderator",
                            timeout=3,
                            options=flows.labels_cmd("set", labels=f"ラベル{round_}-{n}、固定"),
                        )
                        final = final_answer(rec)
                    except Exception:
                        return
                    if "にしました" in (final.get("content") or ""):  # 「… のラベルセットを v12 にしました（2件）。」
                        confirmed = max(confirmed, int(re.search(r"v(\d+)", final["content"]).group(1)))

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(1.0)
            bot.process.kill()
            bot.process.wait()
            stop.set()
            thread.join()
            with sqlite3.connect(db) as conn:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
                version = conn.execute("SELECT max(version) FROM label_history").fetchone()[0] or 0
            results.append(check)
            assert confirmed > last_confirmed, "no change was confirmed before the kill"
            last_confirmed = confirmed
            assert check == "ok" and version >= confirmed, (check, version, confirmed)
        bot.start()
        shown = fake.interact("labels", options=flows.labels_cmd("show"), user="moderator").wait_final()
        assert f"v{version}" in shown["embeds"][0]["description"]
        assert bot.stop() == 0
    FIGURES["bot_killed_mid_write"] = {
        "kills": 5,
        "integrity_ok": results.count("ok"),
        "last_version": version,
        "last_confirmed_version": confirmed,
    }


def test_two_moderators_at_once_never_lose_an_update(stub_model, tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(fake, stub_model, tmp_path, worker="stub")
        bot.start()
        try:
            flows.set_labels(fake, flows.LABELS)
            second = make_user(7_000_001, "jiro_mod")  # another member with the moderator role
            recs = [
                fake.interact("labels", user=who, roles=roles, options=flows.labels_cmd("add", labels=label))
                for who, roles, label in (
                    ("moderator", None, "黄色い星"),
                    (second, [fake.moderator_role_id], "紫の三角"),
                )
            ]
            finals = [r.wait_final() for r in recs]
            saved = [label for label, f in zip(("黄色い星", "紫の三角"), finals) if "追加しました" in f["content"]]
            conflicts = [f for f in finals if "同時に別の人" in f["content"]]
            assert len(saved) + len(conflicts) == 2 and saved
            assert all(f["ephemeral"] for f in conflicts)  # a refusal is the moderator's own business
            # each confirmation shows the version its own command wrote, never the other's
            history = fake.interact("labels", options=flows.labels_cmd("history"), user="moderator").wait_final()
            for who, final in zip((fake.moderator_id, second["id"]), finals):
                if "追加しました" in final["content"]:
                    version = re.search(r"v(\d+)", final["content"]).group(1)
                    assert f"<@{who}>" in final["content"]
                    assert re.search(rf"v{version}・追加・<@{who}>", history["embeds"][0]["description"]), history
            shown = fake.interact("labels", options=flows.labels_cmd("show"), user="moderator").wait_final()
            for label in saved:
                assert label in shown["embeds"][0]["description"]
        finally:
            assert bot.stop() == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_a_full_or_read_only_disk_gives_the_moderator_a_clear_error_and_changes_nothing(stub_model, tmp_path):
    data = tmp_path / "data"
    if not _mount_tmpfs(data, "2m"):
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        with FakeDiscord() as fake:
            bot = BotProcess(
                fake, stub_model, tmp_path, worker="stub", WAKERU_STORAGE__URL=f"sqlite:///{data}/wakeru.db"
            )
            bot.start()
            try:
                flows.set_labels(fake, "赤い丸、青い丸")
                filler = data / "filler"
                with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
                    for chunk in (65536, 1):
                        try:
                            while f.write(b"\0" * chunk):
                                pass
                        except OSError:
                            pass
                full = fake.interact(
                    "labels", user="moderator", options=flows.labels_cmd("set", labels="x" * 40 + "、" + "y" * 40)
                ).wait_final()
                assert (
                    "データベースを使えませんでした" in full["content"] and "何も変更されていません" in full["content"]
                )
                assert "容量" in full["content"] and full["ephemeral"], full  # said privately
                assert str(data) not in full["content"] and "wakeru.db" not in full["content"]  # no file named
                filler.unlink()
                shown = fake.interact("labels", options=flows.labels_cmd("show"), user="moderator").wait_final()
                assert (
                    "赤い丸" in shown["embeds"][0]["description"] and "x" * 40 not in shown["embeds"][0]["description"]
                )
                # a volume mounted read-only (remounting needs the bot to let go of the file first)
                assert bot.stop() == 0
                assert subprocess.run(["mount", "-o", "remount,ro", str(data)]).returncode == 0
                bot.start()
                ro = fake.interact(
                    "labels", user="moderator", options=flows.labels_cmd("add", labels="緑の丸")
                ).wait_final()
                assert "データベースを使えませんでした" in ro["content"] and ro["ephemeral"], ro
                assert "read-only" in ro["content"] and "wakeru.db" not in ro["content"], ro["content"]
                shown = fake.interact("labels", options=flows.labels_cmd("show"), user="moderator").wait_final()
                assert "赤い丸" in shown["embeds"][0]["description"]  # reading still works
                assert bot.stop() == 0
                assert subprocess.run(["mount", "-o", "remount,rw", str(data)]).returncode == 0
                bot.start()
                ok = fake.interact(
                    "labels", user="moderator", options=flows.labels_cmd("add", labels="緑の丸")
                ).wait_final()
                assert "追加しました" in ok["content"], ok["content"]
            finally:
                assert bot.stop() == 0
        with sqlite3.connect(data / "wakeru.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        subprocess.run(["umount", "-l", str(data)])
