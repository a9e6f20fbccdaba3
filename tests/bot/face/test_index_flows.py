"""End to end, the image index: the real `python -m bot` against the fake Discord, with the torch-free
stub worker (its embeddings: one direction per shape class, so a query naming a class finds that class,
and the same bytes always give the same vector) and the real SQLite + sqlite-vec index.

What needs a real model (ranking by the trained tiny model, recompressed reposts, a model change) is in
test_index_model_flows.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sqlite3
import time

import pytest

from tests.support import flows
from tests.support.bot_process import BotProcess
from tests.support.fake_discord import FakeDiscord, Perm, overwrite

pytestmark = pytest.mark.slow  # one `python -m bot`, restarted once

LABELS = flows.LABELS


def cmd(sub: str, **options) -> list[dict]:
    """A subcommand with options: str → STRING, bool → BOOLEAN, int → INTEGER; ("user", id) → USER,
    ("channel", id) → CHANNEL."""
    opts = []
    for name, value in options.items():
        if isinstance(value, tuple):
            kind, value = value
            opts.append({"type": 6 if kind == "user" else 7, "name": name, "value": str(value)})
        elif isinstance(value, bool):
            opts.append({"type": 5, "name": name, "value": value})
        elif isinstance(value, int):
            opts.append({"type": 4, "name": name, "value": value})
        else:
            opts.append({"type": 3, "name": name, "value": value})
    return [{"type": 1, "name": sub, "options": opts}]


def search(fake, query: str, *, user="member", channel_id=None, **options) -> dict:
    opts = [{"type": 3, "name": "query", "value": query}]
    for name, (kind, value) in options.items():
        opts.append({"type": {"user": 6, "channel": 7, "bool": 5}[kind], "name": name, "value": value})
    return fake.interact("search", options=opts, user=user, channel_id=channel_id).wait_final(timeout=60)


def result_ids(answer: dict) -> list[int]:
    """The message ids of a search answer's results, best first (from their jump links)."""
    return [int(e["url"].rsplit("/", 1)[1]) for e in answer.get("embeds", [])]


def wait_indexed(bot: BotProcess, posted: dict, timeout: float = 30) -> None:
    """The bot logs each image it stores: a post without a reply is waited for by its log line."""
    wanted = [f"indexed image {a['id']} " for a in posted["attachments"]]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = bot.log()
        if all(w in log for w in wanted):
            return
        time.sleep(0.1)
    raise AssertionError(f"message {posted['id']} was not indexed:\n{bot.log()[-3000:]}")


def wait_log(bot: BotProcess, pattern: str, timeout: float = 30) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(pattern, bot.log())
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no log line matching {pattern!r}:\n{bot.log()[-3000:]}")


def index(fake, sub: str, by="moderator", channel_id=None, **options) -> dict:
    return fake.interact("index", options=cmd(sub, **options), user=by, channel_id=channel_id).wait_final(timeout=60)


@pytest.fixture(scope="module")
def world(stub_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bot")
    with FakeDiscord() as fake:
        # a channel members cannot see (only the moderator role can), and a second server
        fake.secret_id = fake.add_channel(
            name="秘密",
            overwrites=[
                overwrite(fake.guild_id, deny=Perm.VIEW_CHANNEL),
                overwrite(fake.moderator_role_id, allow=Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY),
            ],
        )
        fake.history_id = fake.add_channel(name="過去")
        fake.other_guild = fake.add_guild(name="別のサーバー")
        with flows.running_bot(fake, stub_model, workdir, worker="stub") as bot:
            yield fake, bot


def test_indexing_is_off_until_enabled_and_then_only_where_enabled(fake, bot):
    flows.set_labels(fake, LABELS)
    before = flows.post_and_wait(fake, fake.channel_id, [("before.png", flows.png("赤い丸", 1), "image/png")])
    assert flows.top_label(before["embeds"][0]) == "赤い丸"
    status = index(fake, "status", by="member")
    assert "オフ" in status["embeds"][0]["description"]

    # a plain member may not switch it on
    refused = index(fake, "enable", by="member")
    assert refused["ephemeral"] and "権限" in refused["content"]

    answer = index(fake, "enable")
    assert "有効" in answer["content"] and f"<#{fake.channel_id}>" in answer["content"]
    status = index(fake, "status", by="member")
    assert "このチャンネルの登録: オン" in status["embeds"][0]["description"]

    mark = fake.mark()
    indexed = flows.post_image(fake, fake.channel_id, "青い丸", 2)
    skipped = flows.post_image(fake, fake.other_channel_id, "青い丸", 3)  # not enabled there
    flows.wait_replies(fake, [indexed], mark)
    wait_indexed(bot, indexed)
    found = result_ids(search(fake, "青い丸"))
    assert int(indexed["id"]) in found
    assert int(skipped["id"]) not in found and int(before["id"]) not in found  # posted before it was on
    assert f"indexed image {skipped['attachments'][0]['id']}" not in bot.log()


def test_search_ranks_the_label_asked_for_first_with_thumbnails_links_and_privately(fake, bot):
    index(fake, "enable")
    posts = [
        flows.post_image(fake, fake.channel_id, label, seed)
        for label, seed in [("緑の四角", 10), ("赤い四角", 11), ("緑の四角", 12), ("青い四角", 13)]
    ]
    for post in posts:
        wait_indexed(bot, post)
    answer = search(fake, "緑の四角")
    assert answer["ephemeral"]  # private unless asked
    ids = result_ids(answer)
    greens = {int(posts[0]["id"]), int(posts[2]["id"])}
    assert set(ids[:2]) == greens, ids
    first = answer["embeds"][0]
    assert first["url"].startswith(f"https://discord.com/channels/{fake.guild_id}/{fake.channel_id}/")
    assert f"<#{fake.channel_id}>" in first["description"] and "<t:" in first["description"]
    thumb = first["thumbnail"]["url"]
    assert fake.attachment_url_works(thumb)

    # old posts: their signed URLs expired; the answer carries fresh ones
    fake.expire_attachments()
    again = search(fake, "緑の四角")
    assert fake.attachment_url_works(again["embeds"][0]["thumbnail"]["url"])
    assert again["embeds"][0]["thumbnail"]["url"] != thumb

    public = search(fake, "緑の四角", public=("bool", True))
    assert not public["ephemeral"]
    nothing = search(fake, "緑の四角", author=("user", fake.users["moderator"]["id"]))
    assert not nothing.get("embeds") and "ありません" in nothing["content"]


def test_members_never_see_channels_they_cannot_read_or_other_servers(fake, bot):
    index(fake, "enable", scope="server")
    secret = flows.post_image(fake, fake.secret_id, "赤い四角", 20, author="moderator")
    index(fake, "enable", scope="server", channel_id=fake.other_guild.channel_id, by="owner")
    later = flows.post_image(fake, fake.other_guild.channel_id, "赤い四角", 22)
    visible = flows.post_image(fake, fake.channel_id, "赤い四角", 23)
    for post in (secret, later, visible):
        wait_indexed(bot, post)

    seen_by_member = result_ids(search(fake, "赤い四角"))
    assert int(visible["id"]) in seen_by_member
    assert int(secret["id"]) not in seen_by_member
    assert int(later["id"]) not in seen_by_member  # another server
    seen_by_moderator = result_ids(search(fake, "赤い四角", user="moderator"))
    assert int(secret["id"]) in seen_by_moderator and int(later["id"]) not in seen_by_moderator
    # the channel option cannot open a channel the member cannot read
    narrowed = search(fake, "赤い四角", channel=("channel", str(fake.secret_id)))
    assert not narrowed.get("embeds")
    # the other server's members find theirs
    there = search(fake, "赤い四角", channel_id=fake.other_guild.channel_id)
    assert result_ids(there) == [int(later["id"])]


def test_a_private_thread_is_searchable_only_by_its_members_and_threads_follow_their_parent(fake, bot):
    fake.add_user("内輪の人")
    index(fake, "enable")  # on the parent channel: its threads follow
    private = fake.add_thread(fake.channel_id, "内緒", private=True, members=["内輪の人", "bot"], owner="内輪の人")
    public = fake.add_thread(fake.channel_id, "公開")
    hidden = flows.post_image(fake, private, "緑の四角", 70, author="内輪の人")
    shown = flows.post_image(fake, public, "緑の四角", 71)
    wait_indexed(bot, hidden)
    wait_indexed(bot, shown)
    by_member = result_ids(search(fake, "緑の四角"))
    assert int(shown["id"]) in by_member and int(hidden["id"]) not in by_member
    assert int(hidden["id"]) in result_ids(search(fake, "緑の四角", user="内輪の人"))
    # a thread's switch is its parent's: /index disable inside the thread turns the parent off
    answer = index(fake, "disable", channel_id=public)
    assert f"<#{fake.channel_id}>" in answer["content"]
    assert "オフ" in index(fake, "status", by="member", channel_id=fake.channel_id)["embeds"][0]["description"]
    index(fake, "enable")
    fake.delete_channel(public)  # THREAD_DELETE
    wait_log(bot, rf"deleted thread {public} removed 1 row")
    assert int(shown["id"]) not in result_ids(search(fake, "緑の四角"))


def test_a_deleted_message_an_edit_and_a_deleted_channel_leave_the_index(fake, bot):
    index(fake, "enable")
    gone = flows.post_image(fake, fake.channel_id, "青い四角", 30)
    edited = fake.post_message(
        fake.channel_id,
        attachments=[
            ("a.png", flows.png("青い四角", 31), "image/png"),
            ("b.png", flows.png("青い四角", 32), "image/png"),
        ],
    )
    for post in (gone, edited):
        wait_indexed(bot, post)
    assert {int(gone["id"]), int(edited["id"])} <= set(result_ids(search(fake, "青い四角")))

    fake.delete_message(fake.channel_id, gone["id"])
    wait_log(bot, rf"deleted message {gone['id']} removed 1 row")
    fake.edit_message(fake.channel_id, edited["id"], attachments=[edited["attachments"][0]])
    wait_log(bot, rf"edited message {edited['id']} removed 1 row")
    answer = search(fake, "青い四角")
    ids = result_ids(answer)
    assert int(gone["id"]) not in ids and ids.count(int(edited["id"])) == 1

    purged = [flows.post_image(fake, fake.channel_id, "青い四角", seed) for seed in (34, 35)]
    for post in purged:
        wait_indexed(bot, post)
    fake.bulk_delete(fake.channel_id, [p["id"] for p in purged])
    wait_log(bot, r"2 bulk-deleted message\(s\) removed 2 row")
    assert not {int(p["id"]) for p in purged} & set(result_ids(search(fake, "青い四角")))

    channel = fake.add_channel(name="消える")
    index(fake, "enable", channel_id=channel)
    doomed = flows.post_image(fake, channel, "青い四角", 33)
    wait_indexed(bot, doomed)
    fake.delete_channel(channel)
    wait_log(bot, rf"deleted channel {channel} removed 1 row")
    assert int(doomed["id"]) not in result_ids(search(fake, "青い四角"))


def test_forget_removes_a_members_images_and_only_moderators_forget_others(fake, bot):
    index(fake, "enable")
    user = fake.add_user("忘れたい人")
    mine = [flows.post_image(fake, fake.channel_id, "緑の丸", s, author="忘れたい人") for s in (40, 41)]
    theirs = flows.post_image(fake, fake.channel_id, "緑の丸", 42)
    for post in (*mine, theirs):
        wait_indexed(bot, post)
    refused = index(fake, "forget", by="忘れたい人", user=("user", fake.users["member"]["id"]))
    assert "モデレーター" in refused["content"]
    answer = index(fake, "forget", by="忘れたい人")
    assert answer["ephemeral"] and "2 枚" in answer["content"]
    ids = result_ids(search(fake, "緑の丸"))
    assert not {int(p["id"]) for p in mine} & set(ids) and int(theirs["id"]) in ids
    by_moderator = index(fake, "forget", user=("user", user["id"]))
    assert "0 枚" in by_moderator["content"]


def test_labels_stats_charts_the_top_labels_of_this_channel(fake, bot):
    channel = fake.add_channel(name="統計")
    flows.set_labels(fake, LABELS, channel_id=channel)
    index(fake, "enable", channel_id=channel)
    mark = fake.mark()
    posts = [flows.post_image(fake, channel, label, s) for s, label in enumerate(["赤い丸"] * 3 + ["青い丸"] * 2, 50)]
    flows.wait_replies(fake, posts, mark)
    answer = fake.interact("labels", options=flows.labels_cmd("stats"), channel_id=channel, user="member").wait_final(
        timeout=60
    )
    assert answer["ephemeral"]
    assert "赤い丸 3" in answer["content"] and "青い丸 2" in answer["content"] and "（5 枚）" in answer["content"]
    png = answer["files"][0]
    assert png["filename"].endswith(".png") and png["data"].startswith(b"\x89PNG\r\n\x1a\n")
    empty = fake.interact("labels", options=flows.labels_cmd("stats"), channel_id=fake.history_id).wait_final()
    assert "ありません" in empty["content"] and not empty.get("files")


def test_backfill_indexes_the_history_with_progress_and_resumes_after_a_restart(fake, bot):
    now = dt.datetime.now(dt.timezone.utc)
    old = [
        ("member", f"h{i}.png", flows.png(label, 60 + i), now - dt.timedelta(days=1 + i % 9, minutes=i))
        for i, label in enumerate(["赤い丸", "青い四角", "緑の丸"] * 8)
    ]
    ancient = [("member", "ancient.png", flows.png("赤い丸", 99), now - dt.timedelta(days=40))]
    texts = [("member", None, None, now - dt.timedelta(days=2, seconds=i)) for i in range(150)]
    seeded = fake.seed_history(fake.history_id, old + ancient + texts)
    fake.history_rate_limit(per_second=2)  # discord.py must follow the rate-limit headers

    refused = index(fake, "backfill", by="member", channel_id=fake.history_id)
    assert "権限" in refused["content"]
    started = index(fake, "backfill", channel_id=fake.history_id, days=30)
    assert started["ephemeral"] and "30" in started["content"]
    again = index(fake, "backfill", channel_id=fake.history_id)
    assert "実行中" in again["content"]  # one backfill per channel at a time

    progress = fake.wait_for_message(
        lambda m: m["kind"] == "channel" and m["channel_id"] == fake.history_id and "登録" in (m["content"] or ""),
        since=0,
        timeout=30,
    )
    edits = fake.wait_for(
        lambda: [e for e in fake.edits_of(progress["id"]) if "登録しました" in (e["content"] or "")] or None,
        timeout=90,
        what="the backfill's final progress edit",
    )
    final = edits[-1]["content"]
    assert "24 / 24" in final and "100%" in final and "█" * 20 in final
    ids = {int(m["id"]) for m in seeded[:24]}
    found = set()
    for query in ("赤い丸", "青い四角", "緑の丸"):
        found |= set(result_ids(search(fake, query, channel=("channel", str(fake.history_id)))))
    assert found <= ids and len(found) >= 24 - 3  # 10 results per query at most, 8 per class here
    assert int(seeded[24]["id"]) not in found  # older than 30 days
    assert fake.request_count("GET /channels/{channel}/messages", path=f"/channels/{fake.history_id}/messages") >= 2
    assert not [r for r in fake.requests if r.get("status") == 429]
    fake.history_rate_limit(None)
    status = index(fake, "status", by="member", channel_id=fake.history_id)
    assert "24 枚" in status["embeds"][0]["description"]


def _count(status: dict) -> int:
    return int(re.search(r"登録済みの画像 (\d+) 枚", status["embeds"][0]["description"]).group(1))


def test_a_backfill_stopped_by_a_restart_resumes_where_it_was(fake, bot):
    channel = fake.add_channel(name="再開")
    now = dt.datetime.now(dt.timezone.utc)
    fake.seed_history(
        channel,
        [
            ("member", f"r{i}.png", flows.png(("赤い丸", "青い丸")[i % 2], 200 + i), now - dt.timedelta(hours=i + 1))
            for i in range(40)
        ],
    )
    before = _count(index(fake, "status", by="member"))
    # a slow worker, so the restart comes in the middle of the job
    bot.stop()
    bot.env.update(WAKERU_FAULTS="batch_delay_ms=1500", WAKERU_ALLOW_FAULTS="1")
    bot.start()
    index(fake, "backfill", channel_id=channel, days=7)
    progress = fake.wait_for_message(
        lambda m: m["kind"] == "channel" and m["channel_id"] == channel, since=0, timeout=30
    )

    def part_done() -> dict | None:
        for edit in fake.edits_of(progress["id"]):
            done = re.search(r"(\d+) / 40", edit["content"] or "")
            if done and 0 < int(done.group(1)) < 40:
                return edit
        return None

    fake.wait_for(part_done, timeout=60, what="a progress edit in the middle of the backfill")
    bot.stop()
    edits_before = len(fake.edits_of(progress["id"]))
    del bot.env["WAKERU_FAULTS"], bot.env["WAKERU_ALLOW_FAULTS"]
    bot.start()
    fake.wait_for(
        lambda: any("登録しました" in (e["content"] or "") for e in fake.edits_of(progress["id"])[edits_before:]),
        timeout=60,
        what="the resumed backfill to finish, editing the same progress message",
    )
    assert "resuming the backfill of channel" in bot.log()
    assert "40 / 40" in fake.edits_of(progress["id"])[-1]["content"]
    assert _count(index(fake, "status", by="member")) == before + 40  # each image once


def test_leaving_a_server_removes_everything_of_it(fake, bot):
    guild = fake.other_guild
    index(fake, "enable", scope="server", channel_id=guild.channel_id, by="owner")
    post = flows.post_image(fake, guild.channel_id, "青い丸", 300)
    wait_indexed(bot, post)
    fake.remove_from_guild(guild.id)
    found = wait_log(bot, rf"leaving guild {guild.id} removed (\d+) row")
    assert int(found.group(1)) >= 1


def test_a_channel_and_a_server_deleted_while_the_bot_was_offline_leave_the_index_at_the_next_start(fake, bot):
    index(fake, "enable")
    kept = flows.post_image(fake, fake.channel_id, "赤い四角", 400)
    doomed_channel = fake.add_channel(name="留守中に消える")
    index(fake, "enable", channel_id=doomed_channel)
    doomed = flows.post_image(fake, doomed_channel, "赤い四角", 401)
    server = fake.add_guild(name="留守中に抜ける")
    index(fake, "enable", scope="server", channel_id=server.channel_id, by="owner")
    elsewhere = flows.post_image(fake, server.channel_id, "赤い四角", 402)
    for post in (kept, doomed, elsewhere):
        wait_indexed(bot, post)
    assert {int(kept["id"]), int(doomed["id"])} <= set(result_ids(search(fake, "赤い四角")))

    bot.stop()
    fake.delete_channel(doomed_channel, offline=True)  # no session listens: Discord's events reach nobody
    fake.remove_from_guild(server.id, offline=True)
    seen = len(bot.full_log())
    bot.start()
    fake.wait_for(
        lambda: "index: start-up check:" in bot.full_log()[seen:], timeout=60, what="the start-up check after READY"
    )
    pattern = r"start-up check: (\d+) gone guild\(s\), (\d+) gone channel\(s\): removed (\d+) row"
    line = re.search(pattern, bot.full_log()[seen:])
    assert line and int(line.group(1)) >= 1 and int(line.group(2)) >= 1 and int(line.group(3)) >= 2, line
    ids = result_ids(search(fake, "赤い四角"))
    assert int(kept["id"]) in ids and int(doomed["id"]) not in ids
    with contextlib.closing(sqlite3.connect(bot.workdir / "wakeru.db")) as db:  # the other server is not searchable
        left = db.execute("SELECT COUNT(*) FROM indexed_images WHERE guild_id = ?", (server.id,)).fetchone()[0]
    assert left == 0


def test_without_pgvector_the_bot_runs_and_says_the_index_is_unavailable(stub_model, postgres_url, tmp_path):
    """A PostgreSQL without the vector extension: label sets and answers work, the index says why it cannot."""
    with FakeDiscord() as fake:
        bot = BotProcess(fake, stub_model, tmp_path, worker="stub", WAKERU_STORAGE__URL=postgres_url)
        bot.start()
        try:
            flows.set_labels(fake, LABELS, user="owner")
            reply = flows.post_and_wait(fake, fake.channel_id, [("a.png", flows.png("赤い丸", 1), "image/png")])
            assert flows.top_label(reply["embeds"][0]) == "赤い丸"
            answer = search(fake, "赤い丸")
            assert answer["ephemeral"] and "データベース" in answer["content"] and "secret" not in answer["content"]
            assert "image index is unavailable" in bot.log() and "vector" in bot.log()
        finally:
            assert bot.stop() == 0


def test_a_repost_in_an_answered_channel_gets_both_the_answer_and_the_repost_note(fake, bot):
    channel = fake.add_channel(name="両方")
    flows.set_labels(fake, LABELS, channel_id=channel)  # automatic answers on
    index(fake, "enable", channel_id=channel)
    index(fake, "reposts", channel_id=channel, state="on")
    data = flows.png("青い丸", 400)
    first = flows.post_and_wait(fake, channel, [("a.png", data, "image/png")])
    assert flows.top_label(first["embeds"][0]) == "青い丸"
    mark = fake.mark()
    again = fake.post_message(channel, attachments=[("again.png", data, "image/png")])
    both = fake.wait_for(
        lambda: (lambda r: r if len(r) == 2 else None)(flows.replies(fake, mark).get(str(again["id"]), [])),
        timeout=30,
        what="the answer and the repost note",
    )
    assert any(m["embeds"] and flows.top_label(m["embeds"][0]) == "青い丸" for m in both)
    note = next(m for m in both if not m["embeds"])
    assert f"/{channel}/" in note["content"] and note["components"]
    assert not fake.deduplicated_messages


def test_public_answers_hold_only_what_everyone_may_read(fake, bot):
    """A public /search answer, and a repost note, never show a private channel's or a private thread's post."""
    index(fake, "enable", scope="server")
    secret = flows.post_image(fake, fake.secret_id, "緑の丸", 500, author="moderator")
    wait_indexed(bot, secret)
    assert int(secret["id"]) in result_ids(search(fake, "緑の丸", user="moderator"))
    shown = search(fake, "緑の丸", user="moderator", public=("bool", True))
    assert not shown["ephemeral"] and int(secret["id"]) not in result_ids(shown)

    channel = fake.add_channel(name="公開の重複")
    index(fake, "enable", channel_id=channel)
    index(fake, "reposts", channel_id=channel, state="on")
    fake.add_user("内緒の人")
    hidden_thread = fake.add_thread(channel, "内緒2", private=True, members=["内緒の人", "bot"], owner="内緒の人")
    public_bytes, private_bytes = flows.png("赤い四角", 501), flows.png("青い四角", 502)
    public_first = fake.post_message(channel, attachments=[("p.png", public_bytes, "image/png")])
    private_first = fake.post_message(
        hidden_thread, author="内緒の人", attachments=[("s.png", private_bytes, "image/png")]
    )
    wait_indexed(bot, public_first)
    wait_indexed(bot, private_first)
    mark = fake.mark()
    leak = fake.post_message(channel, attachments=[("s2.png", private_bytes, "image/png")])
    sentinel = fake.post_message(channel, attachments=[("p2.png", public_bytes, "image/png")])
    note = fake.wait_for_message(flows.replies_to(fake, sentinel, mark), since=mark, timeout=30)
    assert str(public_first["id"]) in note["content"]  # the sentinel: a repost of a public post is reported
    wait_indexed(bot, leak)
    # (the stand-in's vectors may still find a look-alike elsewhere: what matters is where a note points)
    notes = flows.replies(fake, mark).get(str(leak["id"]), [])
    assert not [n for n in notes if f"/{hidden_thread}/" in n["content"]], "a repost note pointed into a private thread"
