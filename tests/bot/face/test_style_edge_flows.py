"""The edges of answer styles, forum tags, corrections and the user-installed app: other images (broken ones,
several per post, pictures no label fits), hostile labels, other client flows (commands run inside forum posts,
in servers without the bot), permissions through channel:, against the real `python -m bot` with the tiny trained
model and the fake Discord."""

from __future__ import annotations

import csv
import json

import pytest

from tests.bot.face.test_index_flows import wait_log
from tests.support import flows
from tests.support.fake_discord import REQUIRE_TAG, FakeDiscord, Perm, overwrite
from tests.support.flows import labels

pytestmark = pytest.mark.slow

LABELS = flows.LABELS  # 赤い丸、赤い四角、青い丸、青い四角、緑の丸、緑の四角
NAMES = LABELS.split("、")
TAGS = ["赤い丸", "青い四角", "緑の丸", "お気に入り", "質問", "雑談", "作品", "告知"]
MANAGE_THREADS = [overwrite(FakeDiscord.bot_role_id, allow=Perm.MANAGE_THREADS)]


@pytest.fixture(scope="module")
def world(trained_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("probe-bot")
    with FakeDiscord() as fake:
        labels = json.dumps(NAMES, ensure_ascii=False)
        with flows.running_bot(
            fake, trained_model, workdir, WAKERU_DISCORD__AUTO_CLASSIFY="all", WAKERU_LABELS__DEFAULT=labels
        ) as bot:
            synced = bot.run("sync")  # global commands with their install types and contexts
            assert synced.returncode == 0, synced.stderr
            yield fake, bot


def files(*classes: str, seed: int = 0) -> list[tuple[str, bytes, str]]:
    return [(f"{c}-{seed}-{i}.png", flows.png(c, seed + i), "image/png") for i, c in enumerate(classes)]


def post(fake, channel_id: int, *classes: str, seed: int = 0, **kw) -> dict:
    return fake.post_message(channel_id, attachments=files(*classes, seed=seed), **kw)


def forum_post(fake, forum_id: int, *classes: str, tags=(), seed: int = 0, attachments=None) -> int:
    thread_id, _ = fake.create_post(
        forum_id, title="見て", attachments=attachments or files(*classes, seed=seed), tags=list(tags)
    )
    return thread_id


def forum_sentinel(fake, forum_id: int, seed: int = 900) -> None:
    """A later post in the same forum that must be tagged: anything owed for earlier posts is done by then."""
    later = forum_post(fake, forum_id, "赤い丸", seed=seed)
    fake.wait_for_thread_edit(later, timeout=60)
    assert "赤い丸" in fake.applied_tag_names(later)


def reply_to(fake, posted: dict, mark: int) -> dict:
    return fake.wait_for_message(flows.replies_to(fake, posted, mark), since=mark, timeout=60)


def text_of(answer: dict) -> str:
    parts = [answer.get("content") or ""]
    parts += [e.get("description") or "" for e in answer.get("embeds") or []]
    return "\n".join(parts)


# ---------------------------------------------------------------- styles: inheritance


def test_a_server_style_reaches_a_new_channel_and_its_thread(fake, bot):
    guild = fake.add_guild(name="別の鯖")
    labels(fake, "set", scope="server", labels=LABELS, channel_id=guild.channel_id)
    changed = labels(fake, "style", scope="server", style="reaction", channel_id=guild.channel_id)
    assert "リアクション1つ" in changed["content"], changed
    channel = fake.add_channel(guild.id, name="新しい")
    posted = post(fake, channel, "青い丸", seed=101)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == f"{NAMES.index('青い丸') + 1}\ufe0f\u20e3"
    thread = fake.add_thread(channel, name="糸")
    in_thread = post(fake, thread, "緑の四角", seed=102)
    assert fake.wait_for_reaction(int(in_thread["id"]), timeout=60) == f"{NAMES.index('緑の四角') + 1}\ufe0f\u20e3"
    shown = labels(fake, "show", by="member", channel_id=thread)
    assert "リアクション1つ（継承）" in shown["embeds"][0]["description"], shown
    # the server's own show says the stored style
    server = labels(fake, "show", by="member", scope="server", channel_id=channel)
    assert "リアクション1つ" in server["embeds"][0]["description"], server


def test_style_in_a_forum_post_sets_the_forum_and_undo_brings_tags_back(fake, bot):
    forum = fake.add_channel(name="反応フォーラム", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    first = forum_post(fake, forum, "緑の丸", seed=111)
    fake.wait_for_thread_edit(first, timeout=60)  # the default there: tags
    changed = labels(fake, "style", style="reaction", channel_id=first)  # run inside the post
    assert f"<#{forum}>" in changed["content"], changed
    second = forum_post(fake, forum, "緑の丸", seed=112)
    assert fake.wait_for_reaction(second, timeout=60) == f"{NAMES.index('緑の丸') + 1}\ufe0f\u20e3"
    assert fake.applied_tag_names(second) == []
    shown = labels(fake, "show", by="member", channel=forum)
    assert "リアクション1つ" in shown["embeds"][0]["description"]
    undone = labels(fake, "undo", channel_id=second)
    assert "継承" in undone["content"], undone
    third = forum_post(fake, forum, "緑の丸", seed=113)
    fake.wait_for_thread_edit(third, timeout=60)
    assert fake.applied_tag_names(third)[0] == "緑の丸"  # (the tiny model also finds 赤い丸 fitting)


def test_undo_of_the_second_style_change_restores_the_first(fake, bot):
    channel = fake.add_channel(name="二度変更")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    labels(fake, "style", style="none", channel_id=channel)
    undone = labels(fake, "undo", channel_id=channel)
    assert "リアクション1つ" in undone["content"], undone
    posted = post(fake, channel, "赤い四角", seed=121)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == f"{NAMES.index('赤い四角') + 1}\ufe0f\u20e3"
    history = labels(fake, "history", channel_id=channel)["embeds"][0]["description"]
    assert history.count("答え方") >= 3 and "取り消し" in history, history
    again = labels(fake, "undo", channel_id=channel)
    assert "継承" in again["content"], again
    answer = flows.post_and_wait(fake, channel, files("赤い四角", seed=122))
    assert flows.top_label(answer["embeds"][0]) == "赤い四角"


# ---------------------------------------------------------------- reaction style


def test_three_images_get_exactly_one_reaction_and_a_corrupt_one_a_warning(fake, bot):
    channel = fake.add_channel(name="三枚")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    three = post(fake, channel, "青い四角", "赤い丸", "緑の丸", seed=131)
    first = fake.wait_for_reaction(int(three["id"]), timeout=60)
    broken = fake.post_message(channel, attachments=[("broken.png", b"this is not a picture at all", "image/png")])
    assert fake.wait_for_reaction(int(broken["id"]), timeout=60) == "\u26a0\ufe0f"
    flows.sentinel(fake, [fake.channel_id])
    assert fake.reactions_on(int(three["id"])) == [first]
    assert first == f"{NAMES.index('青い四角') + 1}\ufe0f\u20e3"
    assert bot.process.poll() is None


def test_labels_that_do_not_fit_react_with_a_question_mark(fake, bot):
    channel = fake.add_channel(name="合わない")
    labels(fake, "set", labels="赤い丸、黄色い三角", channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    posted = post(fake, channel, "青い四角", seed=141)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == "\u2753"


def test_an_eleventh_label_reacts_with_a_letter(fake, bot):
    channel = fake.add_channel(name="多い")
    many = ["犬", "猫", "車", "山", "花", "空の写真", "夜景", "黄色い三角", "紫の星", "白い線", "緑の丸"]
    labels(fake, "set", labels="、".join(many), channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    posted = post(fake, channel, "緑の丸", seed=151)
    letter = "\U0001f1e6"  # 🇦: the 11th place

    def tries() -> list[dict]:
        return [
            r for r in fake.requests if r["method"] == "PUT" and f"/messages/{posted['id']}/reactions/" in r["path"]
        ]

    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == letter
    flows.sentinel(fake, [fake.channel_id])
    assert len(tries()) == 1, [(r["path"], r["status"]) for r in tries()]


def test_bad_emoji_are_refused_and_add_gives_an_existing_label_its_emoji(fake, bot):
    channel = fake.add_channel(name="絵文字")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    for bad in ("犬=:dog:", "犬=🐕🐕", "犬=🐕猫"):
        refused = labels(fake, "add", labels=bad, channel_id=channel)
        assert refused["ephemeral"] and "絵文字ではありません" in refused["content"], (bad, refused)
    added = labels(fake, "add", labels="赤い丸=🔴", channel_id=channel)
    assert "赤い丸" in added["content"], added
    posted = post(fake, channel, "赤い丸", seed=161)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == "🔴"
    shown = labels(fake, "show", by="member", channel_id=channel)["embeds"][0]["description"]
    assert "赤い丸=🔴" in shown or "🔴" in shown


def test_a_reaction_channel_thread_and_a_member_thread_post(fake, bot):
    channel = fake.add_channel(name="糸のリアクション")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    thread = fake.add_thread(channel, name="スレ")
    mark = fake.mark()
    posted = post(fake, thread, "青い丸", seed=171)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == f"{NAMES.index('青い丸') + 1}\ufe0f\u20e3"
    # the context menu there still answers with the embed
    menu = fake.interact("Classify image", target_message=posted, channel_id=thread).wait_final(timeout=60)
    assert flows.top_label(menu["embeds"][0]) == "青い丸" and not menu["ephemeral"]
    flows.sentinel(fake, [fake.channel_id])
    assert not flows.replies(fake, mark).get(str(posted["id"]))


# ---------------------------------------------------------------- forum tags


def test_a_corrupt_image_in_a_forum_post_is_not_tagged_and_nothing_breaks(fake, bot):
    forum = fake.add_channel(name="壊れ", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    broken = forum_post(fake, forum, attachments=[("x.png", b"\x89PNG not really", "image/png")])
    wait_log(bot, rf"post {broken}: no tag of channel {forum}", timeout=60)
    forum_sentinel(fake, forum, seed=181)
    assert fake.applied_tag_names(broken) == []
    assert bot.process.poll() is None


def test_an_author_with_five_tags_keeps_them_and_nothing_is_added(fake, bot):
    forum = fake.add_channel(name="満杯", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    mine = ["お気に入り", "質問", "雑談", "作品", "告知"]
    full = forum_post(fake, forum, "青い四角", tags=mine, seed=191)
    # the author already applied the matching one: no edit needed either
    matching = forum_post(fake, forum, "緑の丸", tags=["緑の丸", "質問"], seed=192)
    forum_sentinel(fake, forum, seed=193)
    assert fake.applied_tag_names(full) == mine
    assert fake.applied_tag_names(matching) == ["緑の丸", "質問"]
    assert not [e for e in fake.thread_edits if e["thread_id"] in (full, matching)]
    failed = [r for r in fake.requests if r["method"] == "PATCH" and r.get("status", 200) >= 400]
    assert not failed, failed


def test_a_forum_that_requires_a_tag_and_a_moderated_tag(fake, bot):
    tags = [{"name": "赤い丸", "moderated": True}, "青い四角", "緑の丸", "お気に入り"]
    forum = fake.add_channel(name="必須", type=15, tags=tags, overwrites=MANAGE_THREADS, flags=REQUIRE_TAG)
    labels(fake, "set", labels=LABELS, channel=forum)
    thread = forum_post(fake, forum, "赤い丸", tags=["お気に入り"], seed=201)
    fake.wait_for_thread_edit(thread, timeout=60)
    assert fake.applied_tag_names(thread)[:2] == ["お気に入り", "赤い丸"]


def test_a_later_message_in_a_tagged_post_is_only_classified(fake, bot):
    forum = fake.add_channel(name="続き", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    thread = forum_post(fake, forum, "青い四角", seed=211)
    fake.wait_for_thread_edit(thread, timeout=60)
    edits = len([e for e in fake.thread_edits if e["thread_id"] == thread])
    mark = fake.mark()
    later = post(fake, thread, "緑の丸", seed=212)
    wait_log(bot, rf"classified message {later['id']} without answering", timeout=60)
    assert not flows.replies(fake, mark).get(str(later["id"])) and not fake.reactions_on(int(later["id"]))
    assert len([e for e in fake.thread_edits if e["thread_id"] == thread]) == edits
    assert fake.applied_tag_names(thread) == ["青い四角"]


def test_labels_that_do_not_fit_give_a_forum_post_no_tag(fake, bot):
    forum = fake.add_channel(name="不一致", type=15, tags=["赤い丸", "黄色い三角"], overwrites=MANAGE_THREADS)
    labels(fake, "set", labels="赤い丸、黄色い三角", channel=forum)
    thread = forum_post(fake, forum, "青い四角", seed=221)
    # a picture none of the labels describes: the reaction style says ❓; the tags style should not claim one
    wait_log(bot, rf"(post {thread}: no tag|tagged post {thread})", timeout=60)
    assert fake.applied_tag_names(thread) == [], fake.applied_tag_names(thread)


def test_from_tags_with_a_tag_whose_name_has_an_equals_sign(fake, bot):
    forum = fake.add_channel(name="式", type=15, tags=["E=mc2", "赤い丸", "青い四角"], overwrites=MANAGE_THREADS)
    answer = labels(fake, "set", from_tags=True, channel=forum)
    # "=" starts a label's emoji: the tag becomes the label E＝mc2, which still matches it (NFKC)
    assert not answer.get("ephemeral") and "E＝mc2" in answer["content"], answer
    shown = labels(fake, "show", by="member", channel=forum)["embeds"][0]["description"]
    assert "タグがありません" not in shown, shown


def test_from_tags_keeps_tag_emoji_and_show_marks_untagged(fake, bot):
    tags = [{"name": "赤い丸", "emoji_name": "🔴"}, "青い四角", "緑の丸"]
    forum = fake.add_channel(name="絵文字タグ", type=15, tags=tags, overwrites=MANAGE_THREADS)
    answer = labels(fake, "set", from_tags=True, channel=forum)
    assert "赤い丸" in answer["content"], answer
    shown = labels(fake, "show", by="member", channel=forum)["embeds"][0]["description"]
    assert "タグがありません" not in shown, shown
    labels(fake, "style", style="reaction", channel=forum)
    thread = forum_post(fake, forum, "赤い丸", seed=231)
    assert fake.wait_for_reaction(thread, timeout=60) == "🔴"


# ---------------------------------------------------------------- permissions with channel:


def test_a_member_who_manages_the_forum_may_use_channel_and_the_reverse_is_refused(fake, bot):
    theirs = fake.add_channel(
        name="任せた",
        type=15,
        tags=TAGS,
        overwrites=[*MANAGE_THREADS, overwrite(fake.member_id, allow=Perm.MANAGE_CHANNELS, member=True)],
    )
    allowed = labels(fake, "set", by="member", labels="赤い丸、青い四角", channel=theirs)
    assert not allowed.get("ephemeral") and "赤い丸" in allowed["content"], allowed
    allowed = labels(fake, "style", by="member", style="none", channel=theirs)
    assert "答えない" in allowed["content"], allowed
    # Manage Channels in the channel the command is run in does not reach another channel
    here = fake.add_channel(
        name="自分の部屋", overwrites=[overwrite(fake.member_id, allow=Perm.MANAGE_CHANNELS, member=True)]
    )
    forum = fake.add_channel(name="他人の", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    refused = labels(fake, "set", by="member", labels="赤い丸、青い四角", channel=forum, channel_id=here)
    assert refused["ephemeral"] and "チャンネルの管理" in refused["content"], refused
    refused = labels(fake, "style", by="member", style="none", channel=forum, channel_id=here)
    assert refused["ephemeral"] and "チャンネルの管理" in refused["content"], refused
    # everyone may look
    shown = labels(fake, "show", by="member", channel=forum, channel_id=here)
    assert shown["ephemeral"] and shown["embeds"], shown


# ---------------------------------------------------------------- corrections


def _wrong(fake, answer: dict, user: str) -> dict:
    button = answer["components"][0]["components"][0]
    return fake.click(answer, button["custom_id"], user=user).wait_final(timeout=30)


def _pick(fake, picker: dict, label: str, user: str) -> dict:
    select = picker["components"][0]["components"][0]
    options = {o["label"]: o["value"] for o in select["options"]}
    return fake.click(picker, select["custom_id"], user=user, values=[options[label]]).wait_final(timeout=30)


def test_wrong_on_a_deleted_post_is_refused_clearly(fake, bot):
    channel = fake.add_channel(name="消える")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    mark = fake.mark()
    posted = post(fake, channel, "青い丸", seed=241)
    answer = reply_to(fake, posted, mark)
    fake.delete_message(channel, posted["id"])
    refused = _wrong(fake, answer, "member")
    assert refused["ephemeral"] and "削除" in refused["content"], refused


def test_a_pick_made_after_the_post_was_deleted_is_not_counted(fake, bot):
    channel = fake.add_channel(name="後から消える")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    mark = fake.mark()
    posted = post(fake, channel, "赤い四角", seed=251)
    answer = reply_to(fake, posted, mark)
    moderator_list = _wrong(fake, answer, "moderator")
    member_list = _wrong(fake, answer, "member")
    _pick(fake, moderator_list, "赤い丸", "moderator")
    fake.delete_message(channel, posted["id"])
    wait_log(bot, rf"corrections of deleted message {posted['id']} removed 1 row", timeout=30)
    # the member's private list was opened before the delete; they pick after it
    late = _pick(fake, member_list, "青い四角", "member")
    assert late["ephemeral"] and "削除" in late["content"], late
    stats = labels(fake, "stats", by="member", channel_id=channel)
    assert "青い四角" not in stats["content"], (late, stats)


def test_two_members_then_the_post_is_deleted_and_stats_forget_it(fake, bot):
    channel = fake.add_channel(name="統計")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    mark = fake.mark()
    kept = post(fake, channel, "緑の四角", seed=261)
    gone = post(fake, channel, "青い丸", seed=262)
    replies = flows.wait_replies(fake, [kept, gone], mark)
    kept_answer, gone_answer = replies[str(kept["id"])], replies[str(gone["id"])]
    _pick(fake, _wrong(fake, kept_answer, "member"), "緑の四角", "member")  # agrees
    _pick(fake, _wrong(fake, gone_answer, "member"), "赤い丸", "member")
    _pick(fake, _wrong(fake, gone_answer, "moderator"), "どれでもない", "moderator")
    stats = labels(fake, "stats", by="member", channel_id=channel)["content"]
    assert "33%" in stats and "3 件中 1 件・2 枚" in stats, stats
    assert "青い丸 → 赤い丸" in stats and "青い丸 → どれでもない" in stats, stats
    fake.delete_message(channel, gone["id"])
    wait_log(bot, rf"corrections of deleted message {gone['id']} removed 2 row", timeout=30)
    stats = labels(fake, "stats", by="member", channel_id=channel)["content"]
    assert "100%" in stats and "1 件中 1 件・1 枚" in stats and "→" not in stats, stats


def test_a_forum_with_the_embed_style_takes_corrections_counted_for_the_forum(fake, bot):
    forum = fake.add_channel(name="埋め込みフォーラム", type=15, tags=TAGS, overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    labels(fake, "style", style="embed", channel=forum)
    mark = fake.mark()
    thread, starter = fake.create_post(forum, title="見て", attachments=files("赤い丸", seed=271))
    answer = reply_to(fake, starter, mark)
    assert flows.top_label(answer["embeds"][0]) == "赤い丸" and fake.applied_tag_names(thread) == []
    thanks = _pick(fake, _wrong(fake, answer, "member"), "赤い四角", "member")
    assert thanks["ephemeral"] and "赤い四角" in thanks["content"]
    stats = labels(fake, "stats", by="member", channel=forum)["content"]
    assert "赤い丸 → 赤い四角" in stats, stats
    inside = labels(fake, "stats", by="member", channel_id=thread)["content"]
    assert "赤い丸 → 赤い四角" in inside, inside


def test_export_with_only_none_of_these(fake, bot, tmp_path):
    guild = fake.add_guild(name="輸出")
    labels(fake, "set", labels=LABELS, channel_id=guild.channel_id)
    mark = fake.mark()
    posted = post(fake, guild.channel_id, "青い四角", seed=281)
    answer = reply_to(fake, posted, mark)
    _pick(fake, _wrong(fake, answer, "member"), "どれでもない", "member")
    out = tmp_path / "export"
    done = bot.run("export-corrections", "--guild", str(guild.id), str(out))
    assert done.returncode == 0, done.stderr
    assert not [p for p in out.rglob("*") if p.is_dir()], list(out.rglob("*"))
    rows = list(csv.DictReader((out / "corrections.csv").open(encoding="utf-8")))
    assert rows == []
    assert "0 picture(s) written" in done.stdout and "1 marked none of these" in done.stdout, done.stdout


# ---------------------------------------------------------------- the user-installed app


def test_the_menu_in_a_server_without_the_bot_answers_privately(fake, bot):
    foreign = fake.add_guild(name="よその鯖", bot_member=False)
    shared = fake.post_message(foreign.channel_id, attachments=files("緑の丸", seed=291))
    mark = fake.mark()
    answer = fake.interact(
        "Classify image", target_message=shared, channel_id=foreign.channel_id, installed_in_guild=False
    ).wait_final(timeout=60)
    assert answer["ephemeral"] and flows.top_label(answer["embeds"][0]) == "緑の丸", answer
    assert not answer.get("components")
    assert not [m for m in fake.sent_messages[mark:] if m["channel_id"] == foreign.channel_id]
    # /labels show there is about the member's own set
    user_install = {"installed_in_guild": False}
    shown = labels(fake, "show", by="member", channel_id=foreign.channel_id, interact=user_install)
    assert shown["ephemeral"] and "緑の丸" in shown["embeds"][0]["description"], shown


def test_labels_set_without_scope_in_a_server_without_the_bot_is_the_members_own(fake, bot):
    foreign = fake.add_guild(name="よその鯖2", bot_member=False)
    user_install = {"installed_in_guild": False}
    mine = labels(
        fake, "set", by="member", labels="赤い丸、緑の丸", channel_id=foreign.channel_id, interact=user_install
    )
    assert mine["ephemeral"] and "あなた自身" in mine["content"], mine
    labels(fake, "reset", by="member", scope="me", channel_id=foreign.channel_id, interact=user_install)


def test_own_set_then_reset_in_a_server_without_the_bot(fake, bot):
    foreign = fake.add_guild(name="よその鯖3", bot_member=False)
    user_install = {"installed_in_guild": False}
    shared = fake.post_message(foreign.channel_id, attachments=files("青い丸", seed=301))
    mine = labels(
        fake,
        "set",
        by="member",
        scope="me",
        labels="青い丸、赤い四角",
        channel_id=foreign.channel_id,
        interact=user_install,
    )
    assert mine["ephemeral"] and "あなた自身" in mine["content"], mine
    answer = fake.interact(
        "Classify image", target_message=shared, channel_id=foreign.channel_id, installed_in_guild=False
    ).wait_final(timeout=60)
    assert "緑の丸" not in answer["embeds"][0]["description"] and "あなた自身" in answer["embeds"][0]["description"]
    reset = labels(fake, "reset", by="member", scope="me", channel_id=foreign.channel_id, interact=user_install)
    assert reset["ephemeral"], reset
    answer = fake.interact(
        "Classify image", target_message=shared, channel_id=foreign.channel_id, installed_in_guild=False
    ).wait_final(timeout=60)
    assert "あなた自身" not in answer["embeds"][0]["description"], answer
    again = labels(fake, "reset", by="member", scope="me", channel_id=foreign.channel_id, interact=user_install)
    assert again["ephemeral"], again
    assert not [m for m in fake.sent_messages if m["channel_id"] == foreign.channel_id]


# ---------------------------------------------------------------- mentions


def test_mentions_in_labels_never_ping(fake, bot):
    channel = fake.add_channel(name="メンション")
    hostile = f"@everyone=🐕、@here、<@&{fake.moderator_role_id}>、<@{fake.member_id}>、{LABELS}"
    mark = fake.mark()
    changed = labels(fake, "set", labels=hostile, channel_id=channel)
    assert "everyone" in changed["content"], changed
    posted = post(fake, channel, "赤い丸", seed=311)
    answer = reply_to(fake, posted, mark)
    labels(fake, "style", style="reaction", channel_id=channel)
    labels(fake, "undo", channel_id=channel)
    for m in fake.sent_messages[mark:]:
        mentions = m["allowed_mentions"]
        assert mentions is not None and not mentions.get("parse") and not mentions.get("roles"), m
        assert not mentions.get("users"), m
    assert "@everyone" not in text_of(answer).replace("@\u200beveryone", "")


# ---------------------------------------------------------------- more probes


def test_a_label_emoji_deleted_from_the_server_falls_back_to_its_number(fake, bot):
    channel = fake.add_channel(name="消えた絵文字")
    midori = fake.add_emoji(name="midori")
    with_emoji = LABELS.replace("緑の丸", f"緑の丸=<:midori:{midori}>")
    labels(fake, "set", labels=with_emoji, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    # the emoji goes from Discord (the bot is not told: its cache still has it)
    fake.emojis[fake.guild_id] = [e for e in fake.emojis[fake.guild_id] if int(e["id"]) != midori]
    posted = post(fake, channel, "緑の丸", seed=321)
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == f"{NAMES.index('緑の丸') + 1}\ufe0f\u20e3"
    failed = [r for r in fake.requests if r["method"] == "PUT" and r["status"] >= 400]
    fake.invalid_requests[:] = [r for r in fake.invalid_requests if r not in failed]  # the expected 10014


def test_from_tags_inside_a_forum_post(fake, bot):
    forum = fake.add_channel(name="中から", type=15, tags=["赤い丸", "青い四角", "緑の丸"], overwrites=MANAGE_THREADS)
    labels(fake, "set", labels=LABELS, channel=forum)
    thread = forum_post(fake, forum, "青い四角", seed=331)
    fake.wait_for_thread_edit(thread, timeout=60)
    answer = labels(fake, "set", from_tags=True, channel_id=thread)
    assert not answer.get("ephemeral") and f"<#{forum}>" in answer["content"], answer
    shown = labels(fake, "show", by="member", channel=forum)["embeds"][0]["description"]
    assert shown.startswith("赤い丸、青い四角、緑の丸"), shown


def test_one_reaction_when_the_first_of_two_images_is_broken(fake, bot):
    channel = fake.add_channel(name="一枚目が壊れ")
    labels(fake, "set", labels=LABELS, channel_id=channel)
    labels(fake, "style", style="reaction", channel_id=channel)
    attachments = [("a.png", b"not an image", "image/png"), *files("青い丸", seed=341)]
    posted = fake.post_message(channel, attachments=attachments)
    # a good answer exists for the post: its top label, not ⚠️
    assert fake.wait_for_reaction(int(posted["id"]), timeout=60) == f"{NAMES.index('青い丸') + 1}\ufe0f\u20e3"


def test_wrong_on_the_public_menu_answer_in_a_thread_uses_the_parents_set(fake, bot):
    channel = fake.add_channel(name="親のセット")
    labels(fake, "set", labels="赤い丸、青い丸、緑の丸", channel_id=channel)
    thread = fake.add_thread(channel, name="子")
    labels(fake, "auto", state="off", channel_id=channel)
    shared = post(fake, thread, "緑の丸", seed=351)
    answer = fake.interact("Classify image", target_message=shared, channel_id=thread).wait_final(timeout=60)
    assert flows.top_label(answer["embeds"][0]) == "緑の丸" and not answer["ephemeral"]
    picker = _wrong(fake, answer, "member")
    select = picker["components"][0]["components"][0]
    assert sorted(o["label"] for o in select["options"]) == sorted(["赤い丸", "青い丸", "緑の丸", "どれでもない"])
    thanks = _pick(fake, picker, "青い丸", "member")
    assert thanks["ephemeral"] and "青い丸" in thanks["content"]
    stats = labels(fake, "stats", by="member", channel_id=channel)["content"]
    assert "緑の丸 → 青い丸" in stats, stats


def test_export_with_hostile_label_names(fake, bot, tmp_path):
    guild = fake.add_guild(name="輸出2")
    labels(fake, "set", labels="赤い丸、../上、a/b、a_b、..", channel_id=guild.channel_id)
    mark = fake.mark()
    posts = [post(fake, guild.channel_id, "赤い丸", seed=361 + i) for i in range(4)]
    replies = flows.wait_replies(fake, posts, mark)
    for p, label in zip(posts, ["../上", "a/b", "a_b", ".."]):
        _pick(fake, _wrong(fake, replies[str(p["id"])], "member"), label, "member")
    out = tmp_path / "export"
    done = bot.run("export-corrections", "--guild", str(guild.id), str(out))
    assert done.returncode == 0, done.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(written) == 4 and all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*")), written
    folders = {w.split("/")[0] for w in written}
    assert len(folders) == 4, written  # four labels, four folders
    rows = list(csv.DictReader((out / "corrections.csv").open(encoding="utf-8")))
    assert sorted(r["label"] for r in rows) == sorted(["../上", "a/b", "a_b", ".."]), rows


def test_history_and_undo_without_scope_in_a_server_without_the_bot(fake, bot):
    foreign = fake.add_guild(name="よその鯖4", bot_member=False)
    user_install = {"installed_in_guild": False}
    labels(
        fake,
        "set",
        by="member",
        scope="me",
        labels="赤い丸、緑の丸",
        channel_id=foreign.channel_id,
        interact=user_install,
    )
    history = labels(fake, "history", by="member", channel_id=foreign.channel_id, interact=user_install)
    assert history["ephemeral"] and history.get("embeds"), history
    undone = labels(fake, "undo", by="member", channel_id=foreign.channel_id, interact=user_install)
    assert undone["ephemeral"] and "あなた自身" in undone["content"], undone


def test_every_labels_subcommand_takes_a_channel_option(fake, bot):
    command = fake.synced_command("labels")
    missing = [
        sub["name"]
        for sub in command["options"]
        if not any(o["name"] == "channel" and o["type"] == 7 for o in sub.get("options") or [])
    ]
    assert not missing, missing
    for sub in command["options"]:
        for o in sub.get("options") or []:
            if o["name"] == "channel":
                assert set(o.get("channel_types") or []) >= {0, 15, 16}, (sub["name"], o)
                assert not set(o.get("channel_types") or []) & {10, 11, 12, 4}, (sub["name"], o)


def test_a_server_wide_tags_style_answers_text_channels_with_the_embed(fake, bot):
    guild = fake.add_guild(name="タグ鯖")
    labels(fake, "set", scope="server", labels=LABELS, channel_id=guild.channel_id)
    changed = labels(fake, "style", scope="server", style="tags", channel_id=guild.channel_id)
    assert "フォーラム投稿のタグ" in changed["content"], changed
    answer = flows.post_and_wait(fake, guild.other_channel_id, files("赤い四角", seed=371))
    assert flows.top_label(answer["embeds"][0]) == "赤い四角"
    assert answer["components"][0]["components"][0]["label"] == "違う？"
    forum = fake.add_channel(guild.id, name="鯖フォーラム", type=16, tags=TAGS, overwrites=MANAGE_THREADS)
    thread = forum_post(fake, forum, "青い四角", seed=372)
    fake.wait_for_thread_edit(thread, timeout=60)
    assert fake.applied_tag_names(thread)[0] == "青い四角"
    shown = labels(fake, "show", by="member", channel_id=guild.other_channel_id)["embeds"][0]["description"]
    assert "返信（埋め込み）（継承）" in shown, shown
