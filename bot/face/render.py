"""Results → Discord embeds. Labels are user text: escaped for markdown, cut to fit Discord's limits."""

from __future__ import annotations

import re

import discord

from bot.face.texts import LocaleLike, error_text, text
from bot.services.classifying import ImageAnswer
from bot.services.labelsets import LabelSource
from wakeru.labels import label_emoji, label_name

OK_COLOUR = discord.Colour(0x4E9A06)
WEAK_COLOUR = discord.Colour(0xC4A000)
ERROR_COLOUR = discord.Colour(0xCC0000)
MAX_EMBEDS = 10  # per message (Discord's limit)
_TITLE_CHARS = 80  # 10 embeds must stay under 6,000 characters in all
_LABEL_CHARS = 60
_BAR_CELLS = 10


def escape(value: str, limit: int) -> str:
    """Markdown- and mention-escaped, at most `limit` characters *after* escaping (which can double the length)."""

    def esc(v: str) -> str:
        return discord.utils.escape_markdown(discord.utils.escape_mentions(v))

    out = esc(value)
    keep = len(value)
    while len(out) > limit:  # cut the raw text, never an escape sequence in half
        keep = max(0, min(keep - 1, keep - (len(out) - limit) // 2))
        out = esc(value[:keep]) + "…"
    return out


def describe_source(source: LabelSource, locale: LocaleLike) -> str:
    """Where the labels came from, in words: 「このチャンネルのラベル (v3)」, …"""
    return text(
        locale,
        f"source.{source.kind}",
        count=len(source.labels),
        version=source.version,
        channel=f"<#{source.channel_id}>" if source.channel_id else "",
    )


def percent(score: float) -> str:
    pct = score * 100
    return "<1%" if pct < 0.5 else f"{max(1, round(pct))}%"


def bar(score: float) -> str:
    filled = min(_BAR_CELLS, max(0, round(score * _BAR_CELLS)))
    return "█" * filled + "░" * (_BAR_CELLS - filled)


def result_embed(answer: ImageAnswer, source: LabelSource, locale: LocaleLike) -> discord.Embed:
    result = answer.result
    title = title_of(answer.filename)
    if not result.ok:
        assert result.error is not None  # ClassifyResult.ok is "error is None"
        detail = f"\n-# {escape(result.message, 300)}" if result.message else ""
        embed = discord.Embed(
            title=title, colour=ERROR_COLOUR, description=f"{error_text(locale, result.error)}{detail}"
        )
        embed.set_footer(text=f"{text(locale, 'image_failed')} · {result.error.value}")
        return embed
    emojis = {label_name(label): label_emoji(label) for label in source.labels}  # 犬=🐕 shows 🐕 犬
    lines = [
        f"`{bar(s.score)}` {_with_emoji(emojis.get(s.label))}**{escape(s.label, _LABEL_CHARS)}** {percent(s.score)}"
        for s in result.top
    ]
    weak = result.none_fits  # the model's own "does it fit at all", not the share among these labels
    if weak:
        lines.append(f"\n⚠️ {text(locale, 'low_confidence')}")
    lines.append(f"-# {describe_source(source, locale)}")
    return discord.Embed(title=title, description="\n".join(lines), colour=WEAK_COLOUR if weak else OK_COLOUR)


def _with_emoji(emoji: str | None) -> str:
    return f"{emoji} " if emoji else ""


_SHOWN_LABEL = re.compile(r"\*\*((?:\\.|[^*\\])+)\*\*")


def shown_labels(embed: discord.Embed, names: list[str]) -> list[str]:
    """The labels an answer embed (result_embed) ranked, best first, read back from it: for each, the name in
    `names` that renders the same, else the shown text unescaped; [] for an error answer."""
    shown = []
    for line in (embed.description or "").split("\n"):
        found = _SHOWN_LABEL.search(line) if line.startswith("`") else None
        if found is None:
            continue
        text_shown = found.group(1)
        match = next((name for name in names if escape(name, _LABEL_CHARS) == text_shown), None)
        shown.append(match if match is not None else re.sub(r"\\(.)", r"\1", text_shown).rstrip("…"))
    return shown


def shown_label(embed: discord.Embed, names: list[str]) -> str | None:
    """The top label an answer embed showed (see shown_labels); None for an error answer."""
    ranked = shown_labels(embed, names)
    return ranked[0] if ranked else None


def title_of(filename: str) -> str:
    """An answer embed's title: the image's file name, escaped and cut."""
    return escape(filename, _TITLE_CHARS)


def result_embeds(answers: list[ImageAnswer], source: LabelSource, locale: LocaleLike) -> list[discord.Embed]:
    return [result_embed(a, source, locale) for a in answers[:MAX_EMBEDS]]


def reply(
    answers: list[ImageAnswer], source: LabelSource, locale: LocaleLike, total: int
) -> tuple[str | None, list[discord.Embed]]:
    """(content, embeds) of one answer message; `total` images were offered, at most MAX_EMBEDS answered."""
    content = text(locale, "more_images", limit=MAX_EMBEDS) if total > MAX_EMBEDS else None
    return content, result_embeds(answers, source, locale)


def summary_line(answers: list[ImageAnswer]) -> str:
    """「犬 92%・狼 5%・猫 1%」 for logs."""
    return " | ".join(
        "・".join(f"{s.label} {percent(s.score)}" for s in a.result.top)
        if a.result.error is None  # a.result.ok
        else f"{a.filename}: {a.result.error.value}"
        for a in answers
    )
