"""End to end, the image index with the real model worker (the tiny SigLIP trained on coloured shapes)
behind the real `python -m bot` and the fake Discord: text search and "Find similar images" rank by the
model, a recompressed and resized copy is reported as a repost while a different picture is not, and a
model change marks the stored embeddings stale until a backfill re-embeds them."""

from __future__ import annotations

import io
import random
import re
import shutil
import time

import pytest
from PIL import Image

from tests.bot.face.test_index_flows import index, result_ids, search, wait_indexed
from tests.support import flows, shapes
from tests.support.bot_process import BotProcess
from tests.support.fake_discord import FakeDiscord

pytestmark = pytest.mark.slow  # a real model worker, restarted once


@pytest.fixture(scope="module")
def world(trained_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bot")
    with FakeDiscord() as fake:
        # the repost threshold is calibrated for this tiny model (docs/index.md): a recompressed, halved copy
        # scores 0.99998, another drawing of the same class at most 0.998, another class below 0.98
        with flows.running_bot(fake, trained_model, workdir, WAKERU_INDEX__REPOST_THRESHOLD="0.9995") as bot:
            yield fake, bot


def _recompressed(data: bytes) -> bytes:
    """The same picture, halved and saved again as a lower-quality JPEG (what a repost often is)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=60)
    return out.getvalue()


def test_text_search_and_similar_images_rank_by_the_model(fake, bot):
    index(fake, "enable", scope="server")
    classes = ["赤い丸", "青い四角", "緑の丸", "赤い四角"]
    posts = {label: [flows.post_image(fake, fake.channel_id, label, seed) for seed in (1, 2)] for label in classes}
    for group in posts.values():
        for post in group:
            wait_indexed(bot, post, timeout=60)
    label_of = {int(p["id"]): label for label, group in posts.items() for p in group}
    for label in classes:
        ranked = [label_of.get(i) for i in result_ids(search(fake, label))]
        assert ranked[0] == label and ranked[:3].count(label) == 2, (label, ranked)

    # a new picture of a blue square: its neighbours are the blue squares, never itself
    probe = fake.post_message(fake.other_channel_id, attachments=[("probe.png", flows.png("青い四角", 9), "image/png")])
    answer = fake.interact("Find similar images", target_message=probe).wait_final(timeout=60)
    assert answer["ephemeral"]
    ids = result_ids(answer)
    assert int(probe["id"]) not in ids
    assert set(ids[:2]) == {int(p["id"]) for p in posts["青い四角"]}, ids
    # an indexed message: same, and it is not its own neighbour
    indexed = posts["緑の丸"][0]
    ids = result_ids(fake.interact("Find similar images", target_message=indexed).wait_final(timeout=60))
    assert ids[0] == int(posts["緑の丸"][1]["id"]) and int(indexed["id"]) not in ids


def test_a_recompressed_copy_is_reported_as_a_repost_and_a_moderator_can_clear_it(fake, bot):
    channel = fake.add_channel(name="重複")
    index(fake, "enable", channel_id=channel)
    answer = index(fake, "reposts", channel_id=channel, state="on")
    assert "オン" in answer["content"]
    original_bytes = shapes.encode(shapes.draw("緑の四角", (320, 240), random.Random(77)), "PNG")
    original = fake.post_message(channel, attachments=[("orig.png", original_bytes, "image/png")])
    wait_indexed(bot, original, timeout=60)

    mark = fake.mark()
    copy = fake.post_message(channel, attachments=[("copy.jpg", _recompressed(original_bytes), "image/jpeg")])
    other_bytes = flows.png("赤い丸", 78)
    other = fake.post_message(channel, attachments=[("other.png", other_bytes, "image/png")])
    wait_indexed(bot, other, timeout=60)  # the sentinel: indexed after its repost check ran
    wait_indexed(bot, copy, timeout=60)
    reply = fake.wait_for_message(flows.replies_to(fake, copy, mark), since=mark, timeout=60)
    link = f"https://discord.com/channels/{fake.guild_id}/{channel}/{original['id']}"
    assert link in reply["content"] and "<t:" in reply["content"]
    assert reply["allowed_mentions"]["parse"] == []
    assert not flows.replies(fake, mark).get(str(other["id"])), "a different picture was called a repost"

    button = reply["components"][0]["components"][0]
    refused = fake.click(reply, button["custom_id"], user="member").wait_final()
    assert refused["ephemeral"] and "モデレーター" in refused["content"]
    cleared = fake.click(reply, button["custom_id"], user="moderator").wait_response()
    assert cleared["type"] == 7
    edited = fake.channel_messages[int(reply["id"])]
    assert not edited["components"] and "重複ではない" in edited["content"]

    # the moderator said these look-alikes differ: another copy of them is not reported either
    sentinel_mark = fake.mark()
    again = fake.post_message(channel, attachments=[("copy2.jpg", _recompressed(original_bytes), "image/jpeg")])
    sentinel = fake.post_message(
        channel, attachments=[("copy3.jpg", _recompressed(_recompressed(other_bytes)), "image/jpeg")]
    )
    wait_indexed(bot, again, timeout=60)
    reply3 = fake.wait_for_message(flows.replies_to(fake, sentinel, sentinel_mark), since=sentinel_mark, timeout=60)
    assert str(other["id"]) in reply3["content"]  # the sentinel: a repost of the other picture, reported
    assert not flows.replies(fake, sentinel_mark).get(str(again["id"]))


def test_a_model_change_marks_embeddings_stale_until_a_backfill_re_embeds_them(fake, bot, tmp_path):
    index(fake, "enable")
    post = flows.post_image(fake, fake.channel_id, "青い丸", 90)
    wait_indexed(bot, post, timeout=60)
    assert int(post["id"]) in result_ids(search(fake, "青い丸"))
    status = index(fake, "status", by="member")["embeds"][0]["description"]
    assert "別のモデル" not in status

    # the same weights under another model id: a different model as far as the index can tell
    renamed = tmp_path / "renamed-model"
    shutil.copytree(bot.env["WAKERU_MODEL__ID"], renamed)
    bot.stop()
    bot.env["WAKERU_MODEL__ID"] = str(renamed)
    bot.start()
    status = index(fake, "status", by="member")["embeds"][0]["description"]
    stale = int(re.search(r"(\d+) 枚は別のモデル", status).group(1))
    assert stale >= 1 and str(renamed) in status
    assert int(post["id"]) not in result_ids(search(fake, "青い丸"))  # other model's rows are not searched

    index(fake, "backfill", channel_id=fake.channel_id, days=1)
    end = time.monotonic() + 120
    while int(post["id"]) not in result_ids(search(fake, "青い丸")):
        assert time.monotonic() < end, f"the backfill did not re-embed the stale rows:\n{bot.log()[-3000:]}"
        time.sleep(0.5)
    status = index(fake, "status", by="member")["embeds"][0]["description"]
    left = re.search(r"(\d+) 枚は別のモデル", status)
    # this channel's rows were re-embedded; other channels' wait for their own backfill
    assert left is None or int(left.group(1)) < stale


def test_the_postgresql_index_with_pgvector_serves_the_same_flows(trained_model, pgvector_url, tmp_path):
    """Scale-out storage: the label sets and the image index in PostgreSQL (halfvec + HNSW)."""
    with FakeDiscord() as fake:
        bot = BotProcess(
            fake,
            trained_model,
            tmp_path,
            WAKERU_STORAGE__URL=pgvector_url,
            WAKERU_DISCORD__MODERATOR_ROLE_IDS=f"[{fake.moderator_role_id}]",
        )
        bot.start()
        try:
            index(fake, "enable")
            posts = {
                label: flows.post_image(fake, fake.channel_id, label, 5) for label in ("赤い丸", "青い四角", "緑の丸")
            }
            for post in posts.values():
                wait_indexed(bot, post, timeout=60)
            for label, post in posts.items():
                assert result_ids(search(fake, label))[0] == int(post["id"]), label
            fake.delete_message(fake.channel_id, posts["赤い丸"]["id"])
            deadline = time.monotonic() + 30
            while int(posts["赤い丸"]["id"]) in result_ids(search(fake, "赤い丸")):
                assert time.monotonic() < deadline, "the deleted message stayed in the PostgreSQL index"
                time.sleep(0.3)
            forgotten = index(fake, "forget", by="member")
            assert "2 枚" in forgotten["content"]
            assert not result_ids(search(fake, "青い四角"))
        finally:
            bot.stop()
