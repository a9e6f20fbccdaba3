"""Result embeds: top 3 with bars, the label set's scope, low-confidence notes, escaping and size limits."""

from __future__ import annotations

import discord
import pytest

from bot.face.render import bar, percent, result_embed, result_embeds
from bot.services.classifying import ImageAnswer
from bot.services.labelsets import LabelSource
from wakeru.protocol import ClassifyResult, ErrorCode, LabelScore


def _ok(*scores, fits: bool | None = True) -> ClassifyResult:
    """A result whose labels fit (match 0.9) unless fits=False (match 0.001)."""
    match = None if fits is None else (0.9 if fits else 0.001)
    return ClassifyResult(id="r", top=tuple(LabelScore(label, s, match, fits) for label, s in scores))


SOURCE = LabelSource("channel", ("犬", "狼", "猫"), 123, 4)


def test_top_three_with_percent_bar_and_scope():
    embed = result_embed(ImageAnswer("dog.jpg", _ok(("犬", 0.92), ("狼", 0.05), ("猫", 0.004))), SOURCE, "ja")
    lines = embed.description.splitlines()
    assert lines[0] == "`█████████░` **犬** 92%"
    assert lines[1].endswith("**狼** 5%") and lines[2].endswith("**猫** <1%")
    assert "<#123> のラベルセット（3件・v4）" in embed.description
    assert "自信" not in embed.description and embed.title == "dog.jpg"


def test_a_best_label_that_does_not_fit_gets_a_note_in_the_users_language_whatever_its_share():
    weak = ImageAnswer("x.png", _ok(("犬", 0.94), ("猫", 0.06), fits=False))  # two labels: one always wins the share
    assert "自信がありません" in result_embed(weak, SOURCE, "ja").description
    assert "Not sure" in result_embed(weak, SOURCE, "en-US").description
    assert result_embed(weak, SOURCE, "ja").colour == discord.Colour(0xC4A000)
    # a low share among many labels is no reason for the note when the label fits
    spread = ImageAnswer("y.png", _ok(*[(f"l{i}", 0.08) for i in range(12)]))
    assert "自信" not in result_embed(spread, SOURCE, "ja").description
    unknown = ImageAnswer("z.png", _ok(("犬", 0.2), ("猫", 0.1), fits=None))  # a model without a match: no claim
    assert "自信" not in result_embed(unknown, SOURCE, "ja").description


def test_failures_say_what_went_wrong():
    answer = ImageAnswer("broken.png", ClassifyResult.failure("r", ErrorCode.CORRUPT, "PNG data is truncated"))
    embed = result_embed(answer, SOURCE, "ja")
    assert "壊れている" in embed.description and "PNG data is truncated" in embed.description
    assert embed.colour.value == 0xCC0000


def test_labels_and_filenames_are_escaped_and_cannot_mention():
    answer = ImageAnswer("**bold**_@everyone.png", _ok(("@everyone", 0.9), ("<@&42>", 0.05), ("*x*", 0.05)))
    embed = result_embed(answer, SOURCE, "ja")
    assert "@everyone" not in embed.description.replace("\\", "") or "@\u200beveryone" in embed.description
    assert "\\*\\*bold\\*\\*" in embed.title
    assert "**\\*x\\***" in embed.description


@pytest.mark.parametrize("long", ["あ" * 50, "*_" * 25, "@everyone" * 5 + "~~~~~"])
def test_ten_embeds_of_long_labels_fit_discords_6000_character_budget(long):
    answers = [
        ImageAnswer("_*" * 100 + ".jpg", _ok((long + "1", 0.2), (long + "2", 0.2), (long + "3", 0.2)))
        for _ in range(12)
    ]
    embeds = result_embeds(answers, LabelSource("parent", (long,) * 100, 10**18, 999), "ja")
    assert len(embeds) == 10
    assert sum(len(e) for e in embeds) <= 6000
    assert all(len(e.title) <= 256 and len(e.description) <= 4096 for e in embeds)


def test_percent_and_bar_edges():
    assert percent(0.0) == "<1%" and percent(0.005) == "1%" and percent(1.0) == "100%"
    assert bar(0) == "░" * 10 and bar(1) == "█" * 10 and bar(0.5) == "█" * 5 + "░" * 5
    assert isinstance(result_embed(ImageAnswer("a", _ok()), SOURCE, "ja"), discord.Embed)


def test_a_labels_emoji_is_shown_before_it():
    source = LabelSource("channel", ("犬=🐕", "猫"), 123, 4)
    embed = result_embed(ImageAnswer("dog.jpg", _ok(("犬", 0.9), ("猫", 0.1))), source, "ja")
    lines = embed.description.splitlines()
    assert lines[0] == "`█████████░` 🐕 **犬** 90%" and lines[1].endswith("` **猫** 10%")


@pytest.mark.parametrize("top", ["犬", "*bold* _x_ `c`", "@everyone", "a\\b", "長" * 80, "猫=🐈"])
def test_the_shown_label_is_read_back_from_the_answer(top):
    from bot.face.render import shown_label
    from wakeru.labels import label_name

    labels = (top, "other")
    source = LabelSource("channel", labels, 1, 1)
    name = label_name(top)
    embed = result_embed(ImageAnswer("x.png", _ok((name, 0.9), ("other", 0.1))), source, "ja")
    names = [label_name(label) for label in labels]
    assert shown_label(embed, names) == name
    # the set changed since: the shown text itself (unescaped) when it was not cut
    if len(name) < 50:
        assert shown_label(embed, ["other"]) == name.replace("@everyone", "@\u200beveryone")
    failed = result_embed(ImageAnswer("x.png", ClassifyResult.failure("r", ErrorCode.CORRUPT, "bad")), source, "ja")
    assert shown_label(failed, names) is None
