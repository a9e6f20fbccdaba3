"""bot.services.tagging: which forum tags a post gets from its answers (real discord.ForumTag objects)."""

from __future__ import annotations

import discord

from bot.services.classifying import ImageAnswer
from bot.services.tagging import best_labels, matching_tags, tags_to_apply, untagged_labels
from wakeru.protocol import ClassifyResult, ErrorCode, LabelScore


def tag(tag_id: int, name: str, moderated: bool = False) -> discord.ForumTag:
    return discord.ForumTag.from_data(
        state=None,  # type: ignore[arg-type]
        data={"id": str(tag_id), "name": name, "moderated": moderated, "emoji_id": None, "emoji_name": None},
    )


def answer(*scores: tuple[str, float, bool]) -> ImageAnswer:
    top = tuple(LabelScore(label, score, 0.9 if fits else 0.001, fits) for label, score, fits in scores)
    return ImageAnswer("x.png", ClassifyResult(id="r", top=top))


TAGS = [tag(1, "犬"), tag(2, "ＣＡＴ"), tag(3, "ｲﾇ科"), tag(4, "鳥", moderated=True), tag(5, "空")]


def test_top_label_always_and_the_others_only_when_they_fit():
    answers = [answer(("犬", 0.7, True), ("cat", 0.2, True), ("鳥", 0.1, False))]
    assert best_labels(answers) == ["犬", "cat"]
    # an image none of the labels fits gives no tag at all, and an error counts for nothing
    failed = ImageAnswer("y.png", ClassifyResult.failure("r", ErrorCode.CORRUPT, "x"))
    assert best_labels([answer(("鳥", 0.5, False), ("犬", 0.4, False)), failed]) == []
    assert best_labels([answer(("鳥", 0.5, False)), answer(("犬", 0.6, True))]) == ["犬"]
    # two images: both tops first, then the fitting others by score
    two = [answer(("犬", 0.6, True), ("空", 0.3, True)), answer(("cat", 0.8, True), ("鳥", 0.15, True))]
    assert best_labels(two) == ["犬", "cat", "空", "鳥"]


def test_names_match_across_case_and_width():
    found = matching_tags(["cat", "イヌ科", "犬=🐕", "象"], TAGS)
    assert [t.id for t in found] == [2, 3, 1]
    assert untagged_labels(["犬=🐕", "cat", "象"], TAGS) == ["象"]


def test_the_authors_tags_stay_and_five_is_the_most():
    mine = [TAGS[4]]
    new = tags_to_apply(mine, [TAGS[0], TAGS[1]], may_moderate=True)
    assert new is not None and [t.id for t in new] == [5, 1, 2]
    assert tags_to_apply([TAGS[0]], [TAGS[0]], may_moderate=True) is None  # nothing new: no edit
    full = [tag(10 + i, f"t{i}") for i in range(4)]
    capped = tags_to_apply(full, [TAGS[0], TAGS[1]], may_moderate=True)
    assert capped is not None and len(capped) == 5 and capped[-1].id == 1
    assert tags_to_apply([], [TAGS[3]], may_moderate=False) is None  # a moderated tag needs Manage Threads
