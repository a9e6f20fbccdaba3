"""Forum and media post tags from an answer: which of the channel's tags match the best labels.

Tags are matched to labels by name (wakeru.labels.tag_key: NFKC, case-insensitive, so ＣＡＴ matches cat and
ｲﾇ matches イヌ). The labels that count are each image's top label plus every other label that also clearly
fits (the match rule, `fits`), unless none of them fits the image; the author's own tags are kept first, and a post has at most 5 tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import discord

from bot.services.classifying import ImageAnswer
from wakeru.labels import label_name, tag_key

MAX_APPLIED_TAGS = 5  # Discord's limit per post


def best_labels(answers: Iterable[ImageAnswer]) -> list[str]:
    """The label names to tag with, best first: every image's top label, then the others that clearly fit. An image
    none of the labels fits (the model's own match says so, as a reaction's ❓ does) gives no tag: a wrong tag is
    worse than none, as the author has to take it off again."""
    tops: list[str] = []
    others: list[tuple[float, str]] = []
    for answer in answers:
        result = answer.result
        if not result.ok or not result.top or result.none_fits:
            continue
        tops.append(result.top[0].label)
        others.extend((-s.score, s.label) for s in result.top[1:] if s.fits)
    ordered = tops + [label for _, label in sorted(others)]
    return list(dict.fromkeys(ordered))


def tags_by_key(tags: Iterable[discord.ForumTag]) -> dict[str, discord.ForumTag]:
    by_key: dict[str, discord.ForumTag] = {}
    for tag in tags:
        by_key.setdefault(tag_key(tag.name), tag)
    return by_key


def matching_tags(labels: Iterable[str], tags: Sequence[discord.ForumTag]) -> list[discord.ForumTag]:
    """The channel's tags named like these labels, in the labels' order."""
    by_key = tags_by_key(tags)
    found = [by_key[key] for key in (tag_key(label_name(label)) for label in labels) if key in by_key]
    return list({tag.id: tag for tag in found}.values())


def tags_to_apply(
    current: Sequence[discord.ForumTag], wanted: Sequence[discord.ForumTag], *, may_moderate: bool
) -> list[discord.ForumTag] | None:
    """The post's new tags (the author's first, then the wanted ones, at most 5), or None when nothing changes.
    Moderated tags are only added where the bot may apply them (Manage Threads)."""
    applied = list(current)
    have = {tag.id for tag in applied}
    for tag in wanted:
        if len(applied) >= MAX_APPLIED_TAGS:
            break
        if tag.id in have or (tag.moderated and not may_moderate):
            continue
        applied.append(tag)
        have.add(tag.id)
    return applied if len(applied) > len(current) else None


def untagged_labels(labels: Iterable[str], tags: Sequence[discord.ForumTag]) -> list[str]:
    """The labels no tag of the channel is named like (/labels show marks them)."""
    keys = set(tags_by_key(tags))
    return [label for label in labels if tag_key(label_name(label)) not in keys]
