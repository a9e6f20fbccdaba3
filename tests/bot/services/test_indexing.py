"""The index services on a real SQLite + sqlite-vec index: where indexing and repost replies are on,
what is stored for a classified image, repost detection with moderators' "not a repost" decisions,
retention, the statistics chart and the backfill progress text."""

from __future__ import annotations

import io
import math
import random
import time
from dataclasses import replace

import pytest
from PIL import Image

from bot.face.cogs.index import progress_text
from bot.services.backfill import Progress
from bot.services.classifying import ImageAnswer
from bot.services.indexing import Indexer, Post
from bot.services.stats import ordered_counts, render_chart
from bot.store.images import BackfillJob, open_index
from tests.conftest import make_config
from wakeru.protocol import ClassifyResult, LabelScore, WorkerInfo, pack_embedding


class _Transport:
    info = WorkerInfo("m", "siglip", "cpu", "float32", 32, 8, 1, revision="r1")


def _unit(seed: int, dim: int = 8) -> list[float]:
    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _answer(vector: list[float], label: str = "犬", model: str = "m@r1") -> ImageAnswer:
    result = ClassifyResult(
        id="r", top=(LabelScore(label, 0.9),), embedding=pack_embedding(vector), embedding_model=model
    )
    return ImageAnswer("a.png", result)


@pytest.fixture
async def indexer(tmp_path):
    index = await open_index(f"sqlite:///{tmp_path}/wakeru.db")
    config = make_config(index={"repost_threshold": 0.99, "retention_days": 30})
    yield Indexer(config, index, _Transport())
    await index.close()


def _post(message: int, channel: int = 10, at: float | None = None, parent: int | None = None) -> Post:
    return Post(1, channel, parent, message, 7, time.time() if at is None else at)


async def test_switches_follow_thread_parent_server_then_config(indexer):
    index = indexer.index
    assert (await indexer.switches(1, 10, None)).indexing is False  # index.default: off
    await index.set_enabled(1, None, True, user_id=5)
    assert (await indexer.switches(1, 10, None)).indexing is True  # the server's switch
    await index.set_enabled(1, 20, False, user_id=5)
    assert (await indexer.switches(1, 30, 20)).indexing is False  # a thread follows its parent
    await index.set_reposts(1, 20, True, user_id=5)
    both = await indexer.switches(1, 30, 20)
    assert both.reposts is True and (await indexer.switches(1, 10, None)).reposts is False
    on = Indexer(make_config(index={"default": "on"}), index, _Transport())
    assert (await on.switches(2, 10, None)).indexing is True


async def test_record_stores_ids_labels_and_the_model_that_made_the_embedding(indexer):
    assert await indexer.record(_post(100), 1000, _answer(_unit(1), "猫"))
    assert not await indexer.record(_post(100), 1000, _answer(_unit(1), "猫"))  # stored once
    failed = ImageAnswer("x.png", ClassifyResult.failure("r", "corrupt_image", "bad"))  # type: ignore[arg-type]
    assert not await indexer.record(_post(101), 1001, failed)
    [row] = await indexer.index.get(1, 100)
    assert (row.channel_id, row.author_id, row.labels, row.model) == (10, 7, ("猫",), "m@r1")
    assert indexer.model() == "m@r1"


async def test_a_near_duplicate_is_a_repost_until_a_moderator_clears_the_look_alikes(indexer):
    base = _unit(2)
    await indexer.record(_post(200, at=time.time() - 60), 2000, _answer(base))
    copy = [x + 0.001 for x in base]
    norm = math.sqrt(sum(x * x for x in copy))
    copy = [x / norm for x in copy]
    hit = await indexer.earlier_copy(_post(201), 2001, _answer(copy), {10})
    assert hit is not None and hit.image.message_id == 200
    assert await indexer.earlier_copy(_post(202), 2002, _answer(_unit(3)), {10}) is None  # different
    assert await indexer.earlier_copy(_post(201), 2001, _answer(copy), {99}) is None  # other channels only
    # a later post is never the "earlier" copy
    assert await indexer.earlier_copy(_post(203, at=time.time() - 3600), 2003, _answer(copy), {10}) is None
    await indexer.record(_post(201), 2001, _answer(copy))
    await indexer.index.mark_not_repost(1, 2001, 2000, user_id=5)
    assert await indexer.earlier_copy(_post(204), 2004, _answer(copy), {10}) is None


async def test_retention_expires_old_rows_only(indexer):
    await indexer.record(_post(300, at=time.time() - 40 * 86400), 3000, _answer(_unit(4)))
    await indexer.record(_post(301), 3001, _answer(_unit(5)))
    assert await indexer.expire() == 1
    assert await indexer.index.get(1, 300) == [] and len(await indexer.index.get(1, 301)) == 1
    keep = Indexer(make_config(), indexer.index, _Transport())  # retention_days 0: keep
    assert await keep.expire() == 0


def test_stats_order_puts_the_set_first_and_sums_the_tail():
    rows = ordered_counts({"犬": 2, "猫": 5, "古い": 1}, ["犬", "猫", "鳥"], "その他")
    assert rows == [("猫", 5), ("犬", 2), ("古い", 1), ("鳥", 0)]
    many = ordered_counts({f"l{i}": i for i in range(40)}, [], "その他", max_bars=5)
    assert len(many) == 5 and many[-1] == ("その他", sum(range(36)))


def test_the_chart_is_a_png_with_a_bar_per_label():
    png = render_chart([("犬", 3), ("猫", 1)], "ラベル", "回数")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300 and image.height > 100
    colours = image.convert("RGB").getcolors(maxcolors=100_000)
    assert any(rgb == (0x58, 0x65, 0xF2) for _, rgb in colours)  # the bars are drawn


def test_progress_text_shows_a_bar_counts_rate_and_time_left():
    now = time.time()
    job = BackfillJob(1, 10, 5, now - 30 * 86400, None, 50, 200, "running", now, now, "h")
    text = progress_text("en", Progress(job, 120.0, 75.0, False))
    assert "`" + "█" * 5 + "░" * 15 + "`" in text and "50 / 200" in text and "120 images/min" in text
    assert "about 1 min left" in text and "last 30 days" in text
    done = progress_text("ja", Progress(replace(job, done=200, status="done"), 0.0, 0.0, True))
    assert "█" * 20 in done and "200 / 200" in done and "登録しました" in done and "残り" not in done


async def test_an_image_deleted_while_it_was_classified_does_not_stay(indexer):
    """MESSAGE_DELETE arrived while the picture was with the worker: the delete found nothing to remove, so
    storing it afterwards must remove it again (likewise for a deleted channel or thread)."""
    indexer.forget_later([400])
    assert not await indexer.record(_post(400), 4000, _answer(_unit(6)))
    assert await indexer.index.get(1, 400) == []
    indexer.forget_later([77])  # a deleted thread: its messages go too
    assert not await indexer.record(_post(401, channel=78, parent=77), 4001, _answer(_unit(7)))
    assert await indexer.index.get(1, 401) == []
    assert await indexer.record(_post(402), 4002, _answer(_unit(8)))  # unrelated: stored


def test_progress_text_says_how_many_images_could_not_be_indexed():
    now = time.time()
    job = BackfillJob(1, 10, 5, now - 86400, None, 10, 10, "done", now, now, "h")
    assert "3 images could not be indexed" in progress_text("en", Progress(job, 60.0, 0.0, True, skipped=3))
    assert "could not" not in progress_text("en", Progress(job, 60.0, 0.0, True))
