"""Result embeds: top 3 with bars, the label set's scope, low-confidence notes, escaping and size limits."""

from __future__ import annotations

import discord
import pytest

from bot.labelsets import LabelSource
from bot.render import ImageAnswer, bar, percent, result_embed, result_embeds
from wakeru.protocol import ClassifyResult, ErrorCode, LabelScore


def _ok(*scores) -> ClassifyResult:
    return ClassifyResult(id="r", top=tuple(LabelScore(label, s) for label, s in scores))


SOURCE = LabelSource("channel", ("犬", "狼", "猫"), 123, 4)


def test_top_three_with_percent_bar_and_scope():
    embed = result_embed(ImageAnswer("dog.jpg", _ok(("犬", 0.92), ("狼", 0.05), ("猫", 0.004))), SOURCE, "ja", 0.4)
    lines = embed.description.splitlines()
    assert lines[0] == "`█████████░` **犬** 92%"
    assert lines[1].endswith("**狼** 5%") and lines[2].endswith("**猫** <1%")
    assert "<#123> のラベルセット（3件・v4）" in embed.description
    assert "自信" not in embed.description and embed.title == "dog.jpg"


def test_weak_best_score_gets_a_note_in_the_users_language():
    weak = ImageAnswer("x.png", _ok(("犬", 0.31), ("猫", 0.30), ("狼", 0.29)))
    assert "自信がありません" in result_embed(weak, SOURCE, "ja", 0.4).description
    assert "Not sure" in result_embed(weak, SOURCE, "en-US", 0.4).description


def test_failures_say_what_went_wrong():
    answer = ImageAnswer("broken.png", ClassifyResult.failure("r", ErrorCode.CORRUPT, "PNG data is truncated"))
    embed = result_embed(answer, SOURCE, "ja", 0.4)
    assert "壊れている" in embed.description and "PNG data is truncated" in embed.description
    assert embed.colour.value == 0xCC0000


def test_labels_and_filenames_are_escaped_and_cannot_mention():
    answer = ImageAnswer("**bold**_@everyone.png", _ok(("@everyone", 0.9), ("<@&42>", 0.05), ("*x*", 0.05)))
    embed = result_embed(answer, SOURCE, "ja", 0.4)
    assert "@everyone" not in embed.description.replace("\\", "") or "@\u200beveryone" in embed.description
    assert "\\*\\*bold\\*\\*" in embed.title
    assert "**\\*x\\***" in embed.description


@pytest.mark.parametrize("long", ["あ" * 50, "*_" * 25, "@everyone" * 5 + "~~~~~"])
def test_ten_embeds_of_long_labels_fit_discords_6000_character_budget(long):
    answers = [ImageAnswer("_*" * 100 + ".jpg", _ok((long + "1", 0.2), (long + "2", 0.2), (long + "3", 0.2)))
               for _ in range(12)]
    embeds = result_embeds(answers, LabelSource("parent", (long,) * 100, 10**18, 999), "ja", 0.4)
    assert len(embeds) == 10
    assert sum(len(e) for e in embeds) <= 6000
    assert all(len(e.title) <= 256 and len(e.description) <= 4096 for e in embeds)


def test_percent_and_bar_edges():
    assert percent(0.0) == "<1%" and percent(0.005) == "1%" and percent(1.0) == "100%"
    assert bar(0) == "░" * 10 and bar(1) == "█" * 10 and bar(0.5) == "█" * 5 + "░" * 5
    assert isinstance(result_embed(ImageAnswer("a", _ok()), SOURCE, "ja", 0.4), discord.Embed)
