"""End to end: the real `python -m bot` (discord.py + a spawned local worker) against the local fake
Discord. Every user flow of the bot, as Discord would deliver it.

The worker is the torch-free stand-in of tests/support/stub_worker.py (the real pipe end and decoder
around a rule that names the colour and shape of these pictures), so the bot and its restarts take
seconds; the real model worker answers through the bot in tests/bot/test_reliability.py (a model
that cannot load, the flood) and through the transports in tests/bot/transport/."""

from __future__ import annotations

import random
import re

import pytest

from tests.support import flows, shapes
from tests.support.fake_discord import FakeDiscord, Perm

pytestmark = pytest.mark.slow  # one `python -m bot`, restarted twice

LABELS = flows.LABELS
_png, _jpeg, _labels_cmd, _top_label = flows.png, flows.jpeg, flows.labels_cmd, flows.top_label
_set_labels, _post_and_wait = flows.set_labels, flows.post_and_wait


@pytest.fixture(scope="module")
def world(stub_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bot")
    with FakeDiscord() as fake:
        fake.interaction_deadline = 3.0
        with flows.running_bot(
            fake, stub_model, workdir, worker="stub", WAKERU_ATTACHMENTS__RESIZE_ABOVE_BYTES="40000"
        ) as bot:
            yield fake, bot


def test_moderator_sets_labels_and_a_posted_image_is_answered_with_the_right_label(fake):
    answer = _set_labels(fake, LABELS)
    assert not answer["ephemeral"] and "v1" in answer["content"] and "6件" in answer["content"]
    reply = _post_and_wait(fake, fake.channel_id, [("shape.png", _png("青い四角", 1), "image/png")])
    assert len(reply["embeds"]) == 1
    embed = reply["embeds"][0]
    assert _top_label(embed) == "青い四角"
    assert embed["title"] == "shape.png"
    assert embed["description"].count("%") == 3  # top 3 with percentages
    assert f"<#{fake.channel_id}> のラベルセット（6件・v1）" in embed["description"]
    assert reply["allowed_mentions"]["parse"] == [] and reply["allowed_mentions"].get("replied_user") is False
    assert fake.channel_id in fake.typing  # typing while it worked


def test_several_images_in_one_post_get_one_embed_each_and_non_images_are_ignored(fake):
    _set_labels(fake, LABELS)
    files = [
        ("a.png", _png("赤い丸", 2), "image/png"),
        ("notes.txt", b"hello", "text/plain"),
        ("b.jpg", _jpeg("緑の四角", 3), "image/jpeg"),
        ("c.webp", shapes.encode(shapes.draw("青い丸", (180, 180), random.Random(4)), "WEBP"), None),
    ]
    reply = _post_and_wait(fake, fake.channel_id, files)
    assert [e["title"] for e in reply["embeds"]] == ["a.png", "b.jpg", "c.webp"]
    assert [_top_label(e) for e in reply["embeds"]] == ["赤い丸", "緑の四角", "青い丸"]


def test_a_large_image_is_fetched_as_a_media_proxy_rendition_at_the_models_size(fake):
    _set_labels(fake, LABELS)
    data = shapes.encode(shapes.draw("青い丸", (1600, 1200), random.Random(20)), "JPEG", quality=97)
    assert len(data) > 40_000  # above attachments.resize_above_bytes in this world
    reply = _post_and_wait(fake, fake.channel_id, [("big.jpg", data, "image/jpeg")])
    assert _top_label(reply["embeds"][0]) == "青い丸"
    fetched = [r for r in fake.attachment_requests if "big.jpg" in r["path"]]
    assert [r["kind"] for r in fetched] == ["media"], fetched  # the original was never downloaded
    width, height = int(fetched[0]["query"]["width"]), int(fetched[0]["query"]["height"])
    assert height < 1200 and abs(width - height * 4 / 3) <= 1  # aspect kept, short side = model input


def _nothing_before_the_sentinel(fake, ignored: list[dict], channel_id) -> None:
    """A post that must be answered, made after the ones that must not: once its answer is there,
    any answer to the earlier ones would be too (the bot handles events in order of arrival)."""
    sentinel = _post_and_wait(fake, channel_id, [("sentinel.png", _png("緑の丸", 5), "image/png")])
    assert _top_label(sentinel["embeds"][0]) == "緑の丸"
    answered = flows.replies(fake)
    assert not [p["id"] for p in ignored if p["id"] in answered], "an ignored post was answered"


def test_bots_and_unlabelled_channels_are_ignored(fake):
    _set_labels(fake, LABELS)
    mark = fake.mark()
    ignored = [
        fake.post_message(fake.other_channel_id, attachments=[("x.png", _png("赤い丸"), "image/png")]),
        fake.post_message(fake.channel_id, attachments=[("x.png", _png("赤い丸"), "image/png")], bot=True),
        fake.post_message(fake.channel_id, content="no picture here"),
    ]
    _nothing_before_the_sentinel(fake, ignored, fake.channel_id)
    assert not [
        m for m in fake.sent_messages[mark:] if m["kind"] == "channel" and m["channel_id"] == fake.other_channel_id
    ]


def test_a_plain_member_is_refused_and_nothing_changes(fake):
    _set_labels(fake, LABELS)
    answer = _set_labels(fake, "猫、犬", user="member")
    assert answer["ephemeral"] and "チャンネルの管理" in answer["content"]
    answer = fake.interact(
        "labels", options=_labels_cmd("set", labels="猫、犬"), user="member", locale="en-US"
    ).wait_final()
    assert answer["ephemeral"] and "Manage Channels" in answer["content"]
    server = fake.interact(
        "labels",
        options=[{"type": 1, "name": "reset", "options": [{"type": 3, "name": "scope", "value": "server"}]}],
        user="member",
        permissions=Perm.MEMBER | Perm.MANAGE_CHANNELS,
    ).wait_final()
    assert server["ephemeral"] and "サーバー管理" in server["content"]
    shown = fake.interact("labels", options=_labels_cmd("show"), user="member").wait_final()
    assert "青い四角" in shown["embeds"][0]["description"] and "犬" not in shown["embeds"][0]["description"]


def test_a_moderator_role_may_change_labels_without_manage_permissions(fake):
    options = [
        {
            "type": 1,
            "name": "set",
            "options": [
                {"type": 3, "name": "labels", "value": "山、海"},
                {"type": 3, "name": "scope", "value": "server"},
            ],
        }
    ]
    answer = fake.interact(
        "labels", options=options, user="member", roles=[fake.moderator_role_id], permissions=Perm.MEMBER
    ).wait_final()
    assert not answer["ephemeral"] and "このサーバー" in answer["content"]
    fake.interact(
        "labels",
        options=[{"type": 1, "name": "reset", "options": [{"type": 3, "name": "scope", "value": "server"}]}],
        user="moderator",
    ).wait_final()


def test_a_thread_uses_its_parents_labels(fake):
    _set_labels(fake, LABELS)
    reply = _post_and_wait(fake, fake.thread_id, [("t.png", _png("緑の丸", 5), "image/png")])
    embed = reply["embeds"][0]
    assert _top_label(embed) == "緑の丸"
    assert f"親チャンネル <#{fake.channel_id}>" in embed["description"]


def test_classify_with_an_attachment_and_with_ad_hoc_labels(fake):
    rec = fake.interact(
        "classify",
        channel_id=fake.other_channel_id,
        options=[{"type": 3, "name": "labels", "value": "赤い丸, 青い丸, 緑の丸"}],
        attachments={"image": ("mine.png", _png("赤い丸", 6), "image/png")},
    )
    assert rec.wait_response()["type"] == 5  # deferred at once, answered by followup
    final = rec.wait_final(timeout=60)
    embed = final["embeds"][0]
    assert _top_label(embed) == "赤い丸" and "コマンドで指定したラベル（3件）" in embed["description"]
    # without labels: the channel's set, here the labelled channel
    _set_labels(fake, LABELS)
    rec = fake.interact(
        "classify", attachments={"image": ("p.jpg", _jpeg("緑の四角", 7), "image/jpeg")}, locale="en-US"
    )
    embed = rec.wait_final(timeout=60)["embeds"][0]
    assert _top_label(embed) == "緑の四角" and f"label set of <#{fake.channel_id}>" in embed["description"]


def test_classify_refuses_bad_options_at_once(fake):
    none = fake.interact("classify").wait_final()
    assert none["ephemeral"] and "sample" in none["content"]
    text = fake.interact("classify", attachments={"image": ("a.txt", b"hello", "text/plain")}).wait_final()
    assert text["ephemeral"] and "a.txt" in text["content"]
    few = fake.interact(
        "classify",
        options=[{"type": 3, "name": "labels", "value": "犬"}],
        attachments={"image": ("a.png", _png("赤い丸"), "image/png")},
    ).wait_final()
    assert few["ephemeral"] and "2個以上" in few["content"]


def test_classify_a_sample_chosen_by_autocomplete(fake):
    choices = fake.autocomplete("classify", [{"type": 3, "name": "sample", "value": "", "focused": True}])
    assert [c["value"] for c in choices] == ["astronaut.jpg", "cat.jpg", "coffee.jpg", "motorcycle.jpg", "rocket.jpg"]
    choices = fake.autocomplete("classify", [{"type": 3, "name": "sample", "value": "CO", "focused": True}])
    assert [c["value"] for c in choices] == ["coffee.jpg"]
    rec = fake.interact("classify", options=[{"type": 3, "name": "sample", "value": "cat.jpg"}])
    final = rec.wait_final(timeout=60)
    assert final["embeds"][0]["title"] == "cat.jpg" and final["embeds"][0]["description"].count("%") == 3
    bad = fake.interact("classify", options=[{"type": 3, "name": "sample", "value": "../config.yaml"}]).wait_final()
    assert bad["ephemeral"] and "サンプル" in bad["content"]


def test_context_menu_classifies_an_existing_message(fake):
    _set_labels(fake, LABELS)
    _set_labels(fake, "赤い丸、青い四角", channel_id=fake.other_channel_id)  # makes it auto; we still need the menu
    fake.interact(
        "labels",
        options=[{"type": 1, "name": "auto", "options": [{"type": 3, "name": "state", "value": "off"}]}],
        user="moderator",
        channel_id=fake.other_channel_id,
    ).wait_final()
    message = fake.post_message(
        fake.other_channel_id,
        attachments=[("one.png", _png("青い四角", 8), "image/png"), ("two.png", _png("赤い丸", 9), "image/png")],
    )
    rec = fake.interact("Classify image", target_message=message, channel_id=fake.other_channel_id)
    final = rec.wait_final(timeout=60)
    assert [_top_label(e) for e in final["embeds"]] == ["青い四角", "赤い丸"]
    empty = fake.post_message(fake.other_channel_id, content="just text")
    refused = fake.interact("Classify image", target_message=empty, channel_id=fake.other_channel_id).wait_final()
    assert refused["ephemeral"] and "画像がありません" in refused["content"]


def test_a_corrupt_image_gets_a_clear_error_and_the_next_image_still_works(fake):
    _set_labels(fake, LABELS)
    good = _png("赤い四角", 10)
    reply = _post_and_wait(fake, fake.channel_id, [("broken.png", good[: len(good) // 2], "image/png")])
    embed = reply["embeds"][0]
    assert "壊れている" in embed["description"] and "corrupt_image" in embed["footer"]["text"]
    reply = _post_and_wait(fake, fake.channel_id, [("fake.jpg", b"<svg onload=alert(1)>", "image/jpeg")])
    assert "unsupported_format" in reply["embeds"][0]["footer"]["text"]
    reply = _post_and_wait(fake, fake.channel_id, [("ok.png", good, "image/png")])
    assert _top_label(reply["embeds"][0]) == "赤い四角"


def test_mention_labels_never_ping(fake):
    answer = _set_labels(fake, "@everyone、<@&%d>、@here、赤い丸" % fake.moderator_role_id)
    reply = _post_and_wait(fake, fake.channel_id, [("p.png", _png("赤い丸", 11), "image/png")])
    shown = fake.interact("labels", options=_labels_cmd("show")).wait_final()
    for payload in (answer, reply, shown):
        assert (
            payload["allowed_mentions"] == {"parse": [], "replied_user": False}
            or payload["allowed_mentions"].get("parse") == []
        ), payload["allowed_mentions"]
        for key in ("users", "roles"):
            assert not payload["allowed_mentions"].get(key)
    assert (
        "@\u200beveryone" in reply["embeds"][0]["description"] or "@everyone" not in reply["embeds"][0]["description"]
    )


def test_over_long_and_too_many_labels_get_specific_messages(fake):
    long = _set_labels(fake, "犬、" + "あ" * 51)
    assert long["ephemeral"] and "51文字" in long["content"] and "50文字" in long["content"]
    many = _set_labels(fake, ",".join(f"l{i}" for i in range(105)))
    assert many["ephemeral"] and "105個" in many["content"] and "5個減らして" in many["content"]
    one = _set_labels(fake, "犬、犬 ,  犬")
    assert one["ephemeral"] and "1個しかありません" in one["content"]


def test_history_and_undo(fake):
    channel = fake.other_channel_id
    _set_labels(fake, "犬、猫", channel_id=channel)
    added = fake.interact(
        "labels", options=_labels_cmd("add", labels="狐、犬"), user="moderator", channel_id=channel
    ).wait_final()
    assert "「狐」" in added["content"]
    removed = fake.interact(
        "labels", options=_labels_cmd("remove", labels="猫"), user="moderator", channel_id=channel
    ).wait_final()
    assert "「猫」" in removed["content"]
    history = fake.interact(
        "labels", options=_labels_cmd("history"), channel_id=channel, user="moderator"
    ).wait_final()["embeds"][0]["description"]
    assert history.index("削除") < history.index("追加") < history.index("設定")  # newest first
    undo = fake.interact("labels", options=_labels_cmd("undo"), user="moderator", channel_id=channel).wait_final()
    assert not undo["ephemeral"] and "取り消しました" in undo["content"]
    shown = fake.interact("labels", options=_labels_cmd("show"), channel_id=channel).wait_final()
    assert shown["embeds"][0]["description"].startswith("犬、猫、狐")
    for sub in ("undo", "history"):
        denied = fake.interact("labels", options=_labels_cmd(sub), user="member", channel_id=channel).wait_final()
        assert denied["ephemeral"] and "チャンネルの管理" in denied["content"]


def test_add_and_remove_say_exactly_what_is_wrong(fake):
    channel = fake.other_channel_id
    _set_labels(fake, "犬、猫、狐", channel_id=channel)

    def labels(sub, value):
        return fake.interact(
            "labels", options=_labels_cmd(sub, labels=value), user="moderator", channel_id=channel
        ).wait_final()

    assert "残りが1個" in labels("remove", "犬、猫")["content"]
    assert "「象」" in labels("remove", "象、犬")["content"]
    assert "すべてセットに含まれて" in labels("add", "犬")["content"]
    many = [f"ラベル{i:02d}" + "あ" * 40 for i in range(60)]
    added = labels("add", "、".join(many))
    assert "（63件）" in added["content"] and "ほか50件" in added["content"] and len(added["content"]) < 2000
    too_many = labels("add", "、".join(f"別{i}" for i in range(40)))
    assert "103個" in too_many["content"] and "上限の100個" in too_many["content"]
    shown = fake.interact("labels", options=_labels_cmd("show"), channel_id=channel).wait_final()
    assert len(shown["embeds"][0]["description"]) <= 4096 and "63件・v" in shown["embeds"][0]["description"]


def test_presets_server_scope_and_reset(fake):
    choices = fake.autocomplete(
        "labels",
        [{"type": 1, "name": "preset", "options": [{"type": 3, "name": "name", "value": "an", "focused": True}]}],
        user="moderator",
    )
    assert [c["value"] for c in choices] == ["animals"]
    server = [{"type": 3, "name": "scope", "value": "server"}]
    applied = fake.interact(
        "labels",
        options=[{"type": 1, "name": "preset", "options": [{"type": 3, "name": "name", "value": "vehicles"}, *server]}],
        user="moderator",
        channel_id=fake.thread_id,
    ).wait_final()
    assert "vehicles" in applied["content"] and "このサーバー" in applied["content"]
    shown = fake.interact("labels", options=[{"type": 1, "name": "show", "options": server}]).wait_final()
    assert shown["embeds"][0]["description"].startswith("車、自転車")
    reset = fake.interact(
        "labels", options=[{"type": 1, "name": "reset", "options": server}], user="moderator"
    ).wait_final()
    assert "既定のラベルセット" in reset["content"]


def test_unknown_preset_is_refused(fake):
    answer = fake.interact(
        "labels",
        options=[{"type": 1, "name": "preset", "options": [{"type": 3, "name": "name", "value": "nope"}]}],
        user="moderator",
    ).wait_final()
    assert answer["ephemeral"] and "animals" in answer["content"]


def test_auto_switch_turns_a_channel_on_and_off(fake):
    channel = fake.other_channel_id
    on = fake.interact(
        "labels",
        options=[{"type": 1, "name": "auto", "options": [{"type": 3, "name": "state", "value": "on"}]}],
        user="moderator",
        channel_id=channel,
    ).wait_final()
    assert "オン" in on["content"]
    reply = _post_and_wait(fake, channel, [("x.png", _png("緑の丸", 12), "image/png")])
    assert reply["embeds"]
    off = fake.interact(
        "labels",
        options=[{"type": 1, "name": "auto", "options": [{"type": 3, "name": "state", "value": "off"}]}],
        user="moderator",
        channel_id=channel,
    ).wait_final()
    assert "オフ" in off["content"] and f"<@{fake.moderator_id}>" in off["content"]
    ignored = fake.post_message(channel, attachments=[("x.png", _png("緑の丸", 13), "image/png")])
    # the sentinel: /classify in the same channel, answered after the post was handled
    rec = fake.interact(
        "classify",
        channel_id=channel,
        options=[{"type": 3, "name": "labels", "value": LABELS}],
        attachments={"image": ("s.png", _png("緑の丸"), "image/png")},
    )
    assert _top_label(rec.wait_final(timeout=60)["embeds"][0]) == "緑の丸"
    assert ignored["id"] not in flows.replies(fake)


def test_labels_survive_a_restart_and_without_message_content_mentions_are_still_classified(world):
    fake, bot = world
    _set_labels(fake, "緑の丸、赤い四角、青い丸")
    assert bot.stop() == 0
    fake.refuse_message_content = True
    try:
        bot.start()
        assert "Message Content" in bot.log() and "4014" in bot.log()
        rec = fake.interact("classify", attachments={"image": ("r.png", _png("緑の丸", 14), "image/png")})
        embed = rec.wait_final(timeout=60)["embeds"][0]
        assert _top_label(embed) == "緑の丸"
        assert "（3件・v" in embed["description"]  # the set stored before the restart
        # Discord leaves the attachments out of posts the bot may not read, except posts that
        # mention it: those are classified
        unread = fake.post_message(fake.channel_id, attachments=[("a.png", _png("赤い丸", 2), "image/png")])
        assert fake.delivered(unread["id"])  # delivered, without its attachments
        reply = _post_and_wait(
            fake,
            fake.channel_id,
            [("b.png", _png("青い丸", 3), "image/png")],
            content=f"<@{fake.bot_user['id']}> これは？",
        )
        assert _top_label(reply["embeds"][0]) == "青い丸"
        assert unread["id"] not in flows.replies(fake)  # the mention's answer is the sentinel
    finally:
        fake.refuse_message_content = False
        bot.stop()
        bot.start()
    reply = _post_and_wait(fake, fake.channel_id, [("after.png", _png("青い丸", 15), "image/png")])
    assert _top_label(reply["embeds"][0]) == "青い丸"


# ---------------------------------------------------------------- answers that mean what they say


def test_the_note_says_none_of_the_labels_fits_whatever_the_number_of_labels(fake):
    """Two labels that do not fit: one of them still takes 90 %+ of the share, but the note is there.
    A clear match among 13 labels has a small share each for the rest, and no note."""
    rec = fake.interact(
        "classify",
        options=[{"type": 3, "name": "labels", "value": "赤い丸、黄色い三角"}],
        attachments={"image": ("blue.png", _png("青い四角", 1), "image/png")},
    )
    embed = rec.wait_final(timeout=60)["embeds"][0]
    assert "自信がありません" in embed["description"], embed
    many = "、".join([*shapes.CLASSES, "犬", "猫", "車", "山", "花", "空の写真", "夜景"])
    rec = fake.interact(
        "classify",
        options=[{"type": 3, "name": "labels", "value": many}],
        attachments={"image": ("blue.png", _png("青い四角", 1), "image/png")},
    )
    embed = rec.wait_final(timeout=60)["embeds"][0]
    assert _top_label(embed) == "青い四角" and "自信" not in embed["description"], embed


def _change(fake, sub: str, channel, user="moderator", **options) -> tuple[dict, object]:
    rec = fake.interact("labels", options=_labels_cmd(sub, **options), user=user, channel_id=channel)
    return rec.wait_final(), rec


def test_changes_are_announced_with_the_labels_they_leave_and_refusals_stay_private(fake):
    channel = fake.other_channel_id
    fake.interact("labels", options=_labels_cmd("reset"), user="moderator", channel_id=channel).wait_final()
    done, rec = _change(fake, "set", channel, labels="犬、猫、狐")
    # public, in the channel, naming who changed it (without pinging), with the set it now is
    assert done["kind"] == "channel" and not done["ephemeral"] and rec.ephemeral and rec.original_deleted
    assert f"<@{fake.moderator_id}>" in done["content"] and done["content"].endswith("\n犬、猫、狐")
    assert done["allowed_mentions"]["parse"] == []
    version = int(re.search(r"v(\d+)", done["content"]).group(1))
    assert _change(fake, "add", channel, labels="象")[0]["content"].endswith(f"v{version + 1}（4件）:\n犬、猫、狐、象")
    assert _change(fake, "remove", channel, labels="猫")[0]["content"].endswith("\n犬、狐、象")
    assert _change(fake, "undo", channel)[0]["content"].endswith("\n犬、猫、狐、象")
    preset = _change(fake, "preset", channel, name="vehicles")[0]["content"]
    assert preset.endswith(
        "\n車、自転車、バイク、バス、トラック、電車、新幹線、飛行機、船、ロケット、ヘリコプター、タクシー"
    )
    reset = _change(fake, "reset", channel)[0]["content"]  # what it falls back to, listed
    assert "既定のラベルセット" in reset and reset.endswith(
        "\n犬、猫、鳥、人、食べ物、飲み物、花、車、乗り物、建物、風景、空、海、山、街並み、室内、料理、動物、植物、文字"
    )
    long = [f"ラベル{i:02d}" + "あ" * 40 for i in range(60)]
    shortened = _change(fake, "set", channel, labels="、".join(long))[0]["content"]
    assert len(shortened) <= 2000 and shortened.endswith("…") and long[0] in shortened
    # every refusal after the (private) deferral is private, and nothing was announced for it
    mark = fake.mark()
    for sub, options, words in (
        ("remove", {"labels": "象"}, "ラベルセットにありません"),
        ("add", {"labels": long[0]}, "すべてセットに含まれて"),
        ("reset", {}, None),
        ("reset", {}, "リセットするものはありません"),
    ):
        answer, rec = _change(fake, sub, channel, **options)
        if words is None:
            continue  # the first reset works
        assert answer["ephemeral"] and words in answer["content"] and rec.deferred, (sub, answer)
    for _ in range(40):  # undo everything there is, then once more
        answer, _ = _change(fake, "undo", channel)
        if answer["ephemeral"]:
            break
    assert "取り消せる変更がありません" in answer["content"]
    assert all(
        m["kind"] == "channel" and not m["ephemeral"] for m in fake.sent_messages[mark:] if m["kind"] == "channel"
    )
    assert not fake.invalid_requests
