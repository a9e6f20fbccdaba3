"""End to end, how channels answer: forum and media post tags, one reaction, no answer, members' corrections and
the user-installed "Classify image" menu, with the real model worker (the tiny SigLIP trained on coloured shapes)
behind the real `python -m bot` and the fake Discord."""

from __future__ import annotations

import csv
import json
import re

import pytest

from tests.bot.face.test_index_flows import wait_log
from tests.support import flows
from tests.support.fake_discord import FakeDiscord, Perm, overwrite
from tests.support.flows import labels

pytestmark = pytest.mark.slow  # a real model worker, restarted once

FORUM_TAGS = ["赤い丸", "青い四角", "緑の丸", "お気に入り"]


@pytest.fixture(scope="module")
def world(trained_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bot")
    with FakeDiscord() as fake:
        # the bot may tag posts in this forum (Manage Threads), not in the second one
        fake.forum_id = fake.add_channel(
            name="作品",
            type=15,
            tags=FORUM_TAGS,
            overwrites=[overwrite(fake.bot_role_id, allow=Perm.MANAGE_THREADS)],
        )
        fake.media_id = fake.add_channel(
            name="写真",
            type=16,
            tags=["青い丸", "赤い丸"],
            overwrites=[overwrite(fake.bot_role_id, allow=Perm.MANAGE_THREADS)],
        )
        fake.locked_forum_id = fake.add_channel(name="ギャラリー", type=16, tags=FORUM_TAGS)
        labels = json.dumps(flows.LABELS.split("、"), ensure_ascii=False)
        with flows.running_bot(
            fake, trained_model, workdir, WAKERU_DISCORD__AUTO_CLASSIFY="all", WAKERU_LABELS__DEFAULT=labels
        ) as bot:
            yield fake, bot


def post(fake, channel_id: int, *classes: str, seed: int = 0) -> dict:
    files = [(f"{c}-{seed}-{i}.png", flows.png(c, seed + i), "image/png") for i, c in enumerate(classes)]
    return fake.post_message(channel_id, attachments=files)


def forum_post(fake, forum_id: int, *classes: str, tags=(), seed: int = 0) -> int:
    files = [(f"{c}-{seed}-{i}.png", flows.png(c, seed + i), "image/png") for i, c in enumerate(classes)]
    thread_id, _ = fake.create_post(forum_id, title="見て", attachments=files, tags=list(tags))
    return thread_id


def test_a_forum_post_gets_the_matching_tags_and_keeps_the_authors(fake, bot):
    # a forum has no message box: its set is managed from another channel with channel:
    answer = labels(fake, "set", labels=flows.LABELS, channel=fake.forum_id)
    assert "作品" in answer["content"] or str(fake.forum_id) in answer["content"]
    thread = forum_post(fake, fake.forum_id, "青い四角", tags=["お気に入り"])
    fake.wait_for_thread_edit(thread, timeout=60)
    assert fake.applied_tag_names(thread) == ["お気に入り", "青い四角"]
    assert not flows.replies(fake).get(str(thread)), "a tags channel got a reply"

    # two pictures of two classes: both tags
    both = forum_post(fake, fake.forum_id, "赤い丸", "緑の丸", seed=3)
    fake.wait_for_thread_edit(both, timeout=60)
    assert sorted(fake.applied_tag_names(both)) == ["緑の丸", "赤い丸"]

    # a media channel, and a label with an emoji: tags match the label's name
    labels(fake, "set", labels="青い丸=🔵、赤い丸、緑の四角", channel=fake.media_id)
    photo = forum_post(fake, fake.media_id, "青い丸", seed=5)
    fake.wait_for_thread_edit(photo, timeout=60)
    assert fake.applied_tag_names(photo)[0] == "青い丸"

    # /labels show, run from the forum post, is about the forum: it marks the labels no tag is named like
    shown = fake.interact("labels", options=flows.labels_cmd("show"), channel_id=thread).wait_final()
    description = shown["embeds"][0]["description"]
    assert "フォーラム投稿のタグ" in description and "赤い四角" in description.split("タグがありません")[0]


def test_without_manage_threads_nothing_breaks_and_it_is_said_once(fake, bot):
    labels(fake, "set", labels=flows.LABELS, channel=fake.locked_forum_id)
    first = forum_post(fake, fake.locked_forum_id, "赤い丸", seed=11)
    second = forum_post(fake, fake.locked_forum_id, "緑の丸", seed=12)
    for thread in (first, second):
        wait_log(bot, rf"post {thread} not tagged: no Manage Threads", timeout=60)
    assert bot.log().count(f"cannot tag posts in channel {fake.locked_forum_id}") == 1
    assert fake.applied_tag_names(first) == [] and fake.applied_tag_names(second) == []
    shown = labels(fake, "show", by="member", channel=fake.locked_forum_id)
    assert "スレッドの管理" in shown["embeds"][0]["description"]
    assert bot.process.poll() is None


def test_from_tags_makes_the_forums_tags_the_set(fake, bot):
    answer = labels(fake, "set", from_tags=True, channel=fake.forum_id)
    assert all(tag in answer["content"] for tag in FORUM_TAGS), answer
    refused = labels(fake, "set", from_tags=True)  # a text channel has no tags
    assert refused["ephemeral"] and "フォーラム" in refused["content"]
    labels(fake, "set", labels=flows.LABELS, channel=fake.forum_id)


def test_a_reaction_channel_gets_one_reaction_and_no_reply(fake, bot):
    channel = fake.add_channel(name="リアクション")
    labels(fake, "set", labels=flows.LABELS, channel_id=channel)
    denied = labels(fake, "style", by="member", channel_id=channel, style="reaction")
    assert denied["ephemeral"] and "チャンネルの管理" in denied["content"]
    changed = labels(fake, "style", channel_id=channel, style="reaction")
    assert "リアクション1つ" in changed["content"]
    mark = fake.mark()
    posted = post(fake, channel, "緑の丸", seed=21)
    emoji = fake.wait_for_reaction(int(posted["id"]), timeout=60)
    place = flows.LABELS.split("、").index("緑の丸")
    assert emoji == f"{place + 1}\ufe0f\u20e3"
    # a label with a custom emoji of this server reacts with it
    aka = fake.add_emoji(name="aka")
    with_emoji = flows.LABELS.replace("赤い丸", f"赤い丸=<:aka:{aka}>")
    labels(fake, "set", labels=with_emoji, channel_id=channel)
    red = post(fake, channel, "赤い丸", seed=22)
    assert fake.wait_for_reaction(int(red["id"]), timeout=60) == f"aka:{aka}"
    same = labels(fake, "add", channel_id=channel, labels="赤い丸")  # the bare name keeps the label's emoji
    assert same["ephemeral"] and "すべてセットに含まれて" in same["content"], same
    flows.sentinel(fake, [fake.channel_id])  # the embed channel answers: anything owed would be here by now
    replies = flows.replies(fake, mark)
    assert not replies.get(str(posted["id"])) and not replies.get(str(red["id"]))
    assert fake.reactions_on(int(posted["id"])) == [emoji]
    # an emoji of another server, or not an emoji at all, is refused with a specific answer
    bad = labels(fake, "add", channel_id=channel, labels="象=<:zou:999>")
    assert bad["ephemeral"] and "このサーバーの絵文字" in bad["content"]
    bad = labels(fake, "add", channel_id=channel, labels="象=ぞう")
    assert bad["ephemeral"] and "絵文字ではありません" in bad["content"]


def test_style_none_classifies_without_answering_and_undo_brings_the_embed_back(fake, bot):
    channel = fake.add_channel(name="静か")
    labels(fake, "set", labels=flows.LABELS, channel_id=channel)
    labels(fake, "style", channel_id=channel, style="none")
    mark = fake.mark()
    quiet = post(fake, channel, "青い丸", seed=31)
    wait_log(bot, rf"classified message {quiet['id']} without answering", timeout=60)
    flows.sentinel(fake, [fake.channel_id])
    assert not flows.replies(fake, mark).get(str(quiet["id"])) and not fake.reactions_on(int(quiet["id"]))
    history = labels(fake, "history", channel_id=channel)
    assert "答えない" in history["embeds"][0]["description"]
    undone = labels(fake, "undo", channel_id=channel)
    assert "返信" in undone["content"] or "継承" in undone["content"]
    answer = flows.post_and_wait(fake, channel, [("b.png", flows.png("青い丸", 32), "image/png")])
    assert flows.top_label(answer["embeds"][0]) == "青い丸"


def test_a_correction_is_stored_survives_a_restart_and_shows_in_stats_and_the_export(fake, bot, tmp_path):
    channel = fake.add_channel(name="訂正")
    labels(fake, "set", labels=flows.LABELS, channel_id=channel)
    mark = fake.mark()
    posted = post(fake, channel, "赤い四角", seed=41)
    answer = fake.wait_for_message(flows.replies_to(fake, posted, mark), since=mark, timeout=60)
    button = answer["components"][0]["components"][0]
    assert button["label"] == "違う？" and button["custom_id"].startswith("wakeru:wrong:")

    picker = fake.click(answer, button["custom_id"], user="member").wait_final()
    assert picker["ephemeral"]
    select = picker["components"][0]["components"][0]
    options = {o["label"]: o["value"] for o in select["options"]}
    assert select["options"][0]["label"] == "赤い四角" and "どれでもない" in options
    thanks = fake.click(picker, select["custom_id"], user="member", values=[options["赤い丸"]]).wait_final()
    assert thanks["ephemeral"] and "赤い丸" in thanks["content"]

    # the bot restarts: the answer's button and the private select still work; the member changes their mind
    bot.stop()
    bot.start()
    picker = fake.click(answer, button["custom_id"], user="member").wait_final()
    select = picker["components"][0]["components"][0]
    assert [o for o in select["options"] if o.get("default")][0]["label"] == "赤い丸"  # their earlier choice
    options = {o["label"]: o["value"] for o in select["options"]}
    changed = fake.click(picker, select["custom_id"], user="member", values=[options["青い四角"]]).wait_final()
    assert "変更" in changed["content"]
    # a second member agrees with the answer (their own private list)
    theirs = fake.click(answer, button["custom_id"], user="moderator").wait_final()
    select = theirs["components"][0]["components"][0]
    options = {o["label"]: o["value"] for o in select["options"]}
    agreed = fake.click(theirs, select["custom_id"], user="moderator", values=[options["赤い四角"]]).wait_final()
    assert "記録" in agreed["content"]

    stats = labels(fake, "stats", by="member", channel_id=channel)
    assert "50%" in stats["content"] and "赤い四角 → 青い四角" in stats["content"], stats["content"]

    out = tmp_path / "export"
    done = bot.run("export-corrections", "--guild", str(fake.guild_id), str(out))
    assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    attachment = posted["attachments"][0]["id"]
    # one member each: a tie, so the latest choice (the moderator's 赤い四角) labels the picture
    assert files == [f"赤い四角/{attachment}.png"], files
    assert (out / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "corrections.csv").open(encoding="utf-8")))
    assert rows[0]["label"] == "赤い四角" and rows[0]["members"] == "2" and "user" not in ",".join(rows[0])

    # exporting again replaces the earlier export; a folder with other files in it is refused
    again = bot.run("export-corrections", "--guild", str(fake.guild_id), str(out))
    assert again.returncode == 0 and sorted(p.name for p in out.rglob("*.png")) == [f"{attachment}.png"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = bot.run("export-corrections", "--guild", str(fake.guild_id), str(tmp_path / "other"))
    assert refused.returncode == 2 and "corrections.csv" in refused.stderr

    # the post is deleted: its corrections go with it
    fake.delete_message(channel, posted["id"])
    wait_log(bot, rf"corrections of deleted message {posted['id']} removed 2 row", timeout=30)


def test_the_user_installed_menu_answers_privately_with_the_members_own_set(fake, bot):
    synced = bot.run("sync")  # global commands, with their install types and contexts
    assert synced.returncode == 0, synced.stderr
    if "friend" not in fake.users:
        fake.add_user("friend")
    private = fake.add_private_channel("member", "friend")  # a group DM without the bot
    shared = fake.post_message(private, author="friend", attachments=[("p.png", flows.png("青い丸", 51), "image/png")])
    answer = fake.interact(
        "Classify image", target_message=shared, channel_id=private, context=2, installed_in_guild=False
    ).wait_final(timeout=60)
    assert answer["ephemeral"] and flows.top_label(answer["embeds"][0]) == "青い丸"
    assert not answer.get("components"), "a private answer has no correction button"
    # the member's own set, set privately, is what their menu answers with
    mine = labels(fake, "set", by="member", scope="me", labels="青い丸、赤い四角")
    assert mine["ephemeral"] and "あなた自身" in mine["content"]
    answer = fake.interact(
        "Classify image", target_message=shared, channel_id=private, context=2, installed_in_guild=False
    ).wait_final(timeout=60)
    description = answer["embeds"][0]["description"]
    assert flows.top_label(answer["embeds"][0]) == "青い丸" and "緑の丸" not in description
    assert "あなた自身" in description
    # in the bot's DM only the member's own set exists
    dm = fake.add_private_channel("member", "bot")
    own = fake.interact("labels", options=flows.labels_cmd("show", scope="me"), channel_id=dm, context=1)
    shown = own.wait_final(timeout=60)
    assert shown["ephemeral"] and "赤い四角" in shown["embeds"][0]["description"]
    # there, without a scope, a change is to their own set; the server's is refused
    mine = fake.interact("labels", options=flows.labels_cmd("set", labels="犬、猫"), channel_id=dm, context=1)
    assert "あなた自身" in mine.wait_final(timeout=60)["content"]
    server = flows.labels_cmd("set", labels="犬、猫", scope="server")
    refused = fake.interact("labels", options=server, channel_id=dm, context=1).wait_final(timeout=60)
    assert refused["ephemeral"] and "サーバー内でのみ" in refused["content"]
    command = fake.synced_command("Classify image")
    assert sorted(command["integration_types"]) == [0, 1] and sorted(command["contexts"]) == [0, 1, 2]


def test_label_commands_refuse_clearly(fake, bot):
    refused = labels(fake, "style", channel_id=fake.channel_id, style="tags")
    assert refused["ephemeral"] and "フォーラム" in refused["content"]
    member = labels(fake, "set", by="member", labels="犬、猫", channel=fake.forum_id)
    assert member["ephemeral"] and "チャンネルの管理" in member["content"]
    bad = labels(fake, "set", labels="=🐕、猫", channel_id=fake.channel_id)
    assert bad["ephemeral"] and "=" in bad["content"]
    assert re.search(r"ラベル", bad["content"])


def test_a_long_set_offers_another_label_through_a_form(fake, bot):
    channel = fake.add_channel(name="長いセット")
    many = flows.LABELS.split("、") + [f"ラベル{i}" for i in range(24)]  # 30 labels: more than a select holds
    labels(fake, "set", labels="、".join(many), channel_id=channel)
    mark = fake.mark()
    posted = post(fake, channel, "緑の四角", seed=61)
    answer = fake.wait_for_message(flows.replies_to(fake, posted, mark), since=mark, timeout=60)
    ranked = [line.split("**")[1] for line in answer["embeds"][0]["description"].splitlines() if line.startswith("`")]
    button = answer["components"][0]["components"][0]
    picker = fake.click(answer, button["custom_id"]).wait_final()
    select = picker["components"][0]["components"][0]
    shown = [o["label"] for o in select["options"]]
    assert len(shown) == 25 and shown[: len(ranked)] == ranked  # the answer's ranking first
    assert shown[-2:] == ["別のラベル…", "どれでもない"] and "ラベル23" not in shown
    opened = fake.click(picker, select["custom_id"], values=[select["options"][-2]["value"]])
    assert opened.wait_response()["type"] == 9
    (field_id,) = fake.modal_inputs(opened)
    refused = fake.submit_modal(opened, {field_id: "象"}).wait_final()
    assert refused["ephemeral"] and "ありません" in refused["content"]
    # a submitted form is closed: the member opens a new one from a new list
    picker = fake.click(answer, button["custom_id"]).wait_final()
    select = picker["components"][0]["components"][0]
    opened = fake.click(picker, select["custom_id"], values=[select["options"][-2]["value"]])
    assert opened.wait_response()["type"] == 9
    (field_id,) = fake.modal_inputs(opened)
    typed = fake.submit_modal(opened, {field_id: "ﾗﾍﾞﾙ23"}).wait_final()  # half-width: the same label
    assert typed["ephemeral"] and "ラベル23" in typed["content"]
    stats = labels(fake, "stats", by="member", channel_id=channel)
    assert "→ ラベル23" in stats["content"], stats["content"]


def test_a_channel_the_member_cannot_see_is_refused_by_name(fake, bot):
    secret = fake.add_channel(name="秘密", overwrites=[overwrite(fake.guild_id, deny=Perm.VIEW_CHANNEL)])
    refused = labels(fake, "stats", by="member", channel=secret)
    assert refused["ephemeral"] and "表示できません" in refused["content"]
    refused = labels(fake, "show", by="member", channel=secret)
    assert refused["ephemeral"] and "表示できません" in refused["content"]


def test_what_each_style_costs_in_discord_requests(fake, bot):
    """A quieter answer is also a cheaper one: per answered post, embed = typing + the reply, reaction = one PUT,
    tags = one PATCH of the post, none = nothing (the picture's download aside). docs/performance.md quotes this."""
    seen = {}
    for style in ("embed", "reaction", "none"):
        channel = fake.add_channel(name=f"費用-{style}")
        labels(fake, "set", labels=flows.LABELS, channel_id=channel)
        labels(fake, "style", channel_id=channel, style=style)
        start = len(fake.requests)
        posted = post(fake, channel, "赤い丸", seed=71)
        if style == "embed":
            fake.wait_for_message(flows.replies_to(fake, posted, 0), timeout=60)
        elif style == "reaction":
            fake.wait_for_reaction(int(posted["id"]), timeout=60)
        else:
            wait_log(bot, rf"classified message {posted['id']} without answering", timeout=60)
        flows.sentinel(fake, [fake.channel_id])  # anything still owed for the post is sent by then
        seen[style] = [
            r["method"]
            for r in fake.requests[start:]
            if f"/channels/{channel}" in r["path"] and "/attachments/" not in r["path"]
        ]
    start = len(fake.requests)
    thread = forum_post(fake, fake.forum_id, "赤い丸", seed=72)
    fake.wait_for_thread_edit(thread, timeout=60)
    flows.sentinel(fake, [fake.channel_id])
    seen["tags"] = [r["method"] for r in fake.requests[start:] if f"/channels/{thread}" in r["path"]]
    assert seen == {"embed": ["POST", "POST"], "reaction": ["PUT"], "none": [], "tags": ["PATCH"]}, seen
