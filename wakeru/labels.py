"""Label text rules shared by the CLI, the worker and the bot.

Labels arrive as free text ("犬、猫, 象"): they are split on commas (ASCII, 、 and
，) and newlines, trimmed, de-duplicated keeping the first occurrence, and checked
against the configured limits. Every violation says what to fix.

A label may carry an emoji after its last "=": "犬=🐕", "猫=<:neko:1234>" (a custom Discord emoji,
<:name:id> or animated <a:name:id>). The part before it is the label's name: the limits, the
normalisation and the de-duplication apply to the name ("犬" and "犬=🐕" are the same label). The
stored form is "name=emoji", without spaces around the "="; split_emoji / label_name / label_emoji
take it apart again.

Stdlib and the `emoji` package only: no torch, PIL or discord.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import emoji as _emoji

__all__ = [
    "LabelError",
    "custom_emoji_id",
    "label_emoji",
    "label_name",
    "normalise_labels",
    "parse_labels",
    "split_emoji",
    "split_labels",
    "tag_key",
]

_SEPARATORS = re.compile(r"[,、，\r\n]+")
# A custom Discord emoji as a message writes it: <:name:id>, animated <a:name:id>.
_CUSTOM_EMOJI = re.compile(r"<(a?):([A-Za-z0-9_]{2,32}):([0-9]+)>")
_VS16 = "\ufe0f"  # variation selector 16 (emoji presentation): "❤" and "❤\ufe0f" are the same emoji


def _visible(ch: str) -> bool:
    """Invisible format characters (zero-width space, BOM, bidi overrides, soft hyphen) make two
    labels that look the same differ, or reorder what a moderator sees; the zero-width joiner
    and tag characters stay, as emoji sequences need them."""
    return unicodedata.category(ch) != "Cf" or ch == "\u200d" or "\U000e0020" <= ch <= "\U000e007f"


class LabelError(ValueError):
    """A label set that cannot be used; the message says what to fix.

    `code` and `params` let a caller say the same thing in another language:
    control_chars(label), too_long(label, length, limit), empty, too_few(count, minimum),
    too_many(count, limit, excess), not_text(type), emoji_without_name(label),
    bad_emoji(label, emoji).

    For too_long, `label` and `length` are the label's name (the part before "=emoji"): the limit
    applies to the name only.
    """

    def __init__(self, message: str, code: str = "invalid", **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


def _is_emoji(text: str) -> bool:
    """One emoji: a Unicode emoji (ZWJ sequences, keycaps, flags and skin tones included; with or
    without U+FE0F), a lone regional indicator letter (🇦 … 🇿: Discord reacts with those, the emoji
    package does not list them) or a custom Discord emoji."""
    if _CUSTOM_EMOJI.fullmatch(text) or (len(text) == 1 and 0x1F1E6 <= ord(text) <= 0x1F1FF):
        return True
    return bool(text) and (_emoji.is_emoji(text) or _emoji.is_emoji(text.replace(_VS16, "")))


def split_emoji(label: str) -> tuple[str, str | None]:
    """An already-normalised label → (name, emoji or None). Never raises: a label whose text after
    its last "=" is not one emoji (a label stored before emoji were allowed, "E=mc2") is all name."""
    name, sep, mark = label.rpartition("=")
    name, mark = name.strip(), mark.strip()
    if sep and name and _is_emoji(mark):
        return name, mark
    return label, None


def label_name(label: str) -> str:
    """The label without its emoji: "犬=🐕" → "犬"."""
    return split_emoji(label)[0]


def label_emoji(label: str) -> str | None:
    """The label's emoji ("犬=🐕" → "🐕", "猫=<:neko:1234>" → "<:neko:1234>"); None when it has none."""
    return split_emoji(label)[1]


def custom_emoji_id(emoji: str) -> int | None:
    """The id of a custom Discord emoji (<:name:id> or <a:name:id>); None for a Unicode emoji."""
    match = _CUSTOM_EMOJI.fullmatch(emoji.strip())
    return int(match.group(3)) if match else None


def tag_key(text: str) -> str:
    """The key forum tag names and label names are matched by: compatibility-normalised (full-width
    "ＣＡＴ" and half-width "ｶﾀｶﾅ" become "CAT" and "カタカナ"), case-folded, invisible characters
    dropped, whitespace collapsed and trimmed. Pass a label's name (label_name), not "name=emoji"."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join("".join(filter(_visible, folded)).split())


def split_labels(text: str) -> list[str]:
    """Split free text into raw label strings (not yet validated)."""
    return [part for part in _SEPARATORS.split(text)]


def normalise_labels(
    labels: Iterable[str], *, max_count: int, max_length: int, min_count: int = 1, emoji: bool = True
) -> tuple[str, ...]:
    """Trim, de-duplicate (order kept, by name) and check a label list.

    "name=emoji" labels come back as "name=emoji" (no spaces around "="); max_length applies to
    the name. emoji=False: "=" is plain text (a search query, "E=mc2 のポスター"). Raises LabelError
    naming the offending label and the limit.
    """
    seen: set[str] = set()
    result: list[str] = []
    for raw in labels:
        if not isinstance(raw, str):
            raise LabelError(f"labels must be text, got {type(raw).__name__}", "not_text", type=type(raw).__name__)
        # one spelling per label (が, not か + ゛), no invisible characters, whitespace trimmed and collapsed
        label = " ".join(unicodedata.normalize("NFC", "".join(filter(_visible, raw))).split())
        if not label:
            continue
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in label):
            raise LabelError(f"label {label!r} contains control characters; remove them", "control_chars", label=label)
        name, sep, mark = label.rpartition("=") if emoji else ("", "", label)
        if sep:
            name, mark = name.strip(), mark.strip()
            if not name:
                raise LabelError(
                    f"label {label!r} has an emoji but no name: write the name before the '=', e.g. 犬=🐕",
                    "emoji_without_name",
                    label=label,
                )
            if not _is_emoji(mark):
                raise LabelError(
                    f"label {label!r}: {mark!r} after the last '=' is not one emoji; give a single emoji "
                    f"(🐕, or a server emoji such as <:name:123>) or leave out the '='",
                    "bad_emoji",
                    label=label,
                    emoji=mark,
                )
            label = f"{name}={mark}"
        else:
            name = label
        if len(name) > max_length:
            raise LabelError(
                f"label {name[:20]!r}… is {len(name)} characters long; the limit is {max_length}: shorten it",
                "too_long",
                label=name,
                length=len(name),
                limit=max_length,
            )
        if name not in seen:
            seen.add(name)
            result.append(label)
    if len(result) < min_count:
        if not result:
            raise LabelError(
                "no labels given: give at least one label, separated by commas or 、", "empty", minimum=min_count
            )
        raise LabelError(
            f"only {len(result)} distinct label(s) given; give at least {min_count}",
            "too_few",
            count=len(result),
            minimum=min_count,
        )
    if len(result) > max_count:
        raise LabelError(
            f"{len(result)} labels given; the limit is {max_count}: remove {len(result) - max_count}",
            "too_many",
            count=len(result),
            limit=max_count,
            excess=len(result) - max_count,
        )
    return tuple(result)


def parse_labels(text: str, *, max_count: int, max_length: int, min_count: int = 1) -> tuple[str, ...]:
    """Free text → validated label tuple."""
    return normalise_labels(split_labels(text), max_count=max_count, max_length=max_length, min_count=min_count)
