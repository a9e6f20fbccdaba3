"""Label text rules shared by the CLI, the worker and the bot.

Labels arrive as free text ("犬、猫, 象"): they are split on commas (ASCII, 、 and
，) and newlines, trimmed, de-duplicated keeping the first occurrence, and checked
against the configured limits. Every violation says what to fix.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[,、，\r\n]+")


def _visible(ch: str) -> bool:
    """Invisible format characters (zero-width space, BOM, bidi overrides, soft hyphen) make two
    labels that look the same differ, or reorder what a moderator sees; the zero-width joiner
    and tag characters stay, as emoji sequences need them."""
    return unicodedata.category(ch) != "Cf" or ch == "\u200d" or "\U000e0020" <= ch <= "\U000e007f"


class LabelError(ValueError):
    """A label set that cannot be used; the message says what to fix.

    `code` and `params` let a caller say the same thing in another language:
    control_chars(label), too_long(label, length, limit), empty, too_few(count, minimum),
    too_many(count, limit, excess), not_text(type).
    """

    def __init__(self, message: str, code: str = "invalid", **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


def split_labels(text: str) -> list[str]:
    """Split free text into raw label strings (not yet validated)."""
    return [part for part in _SEPARATORS.split(text)]


def normalise_labels(labels: Iterable[str], *, max_count: int, max_length: int, min_count: int = 1) -> tuple[str, ...]:
    """Trim, de-duplicate (order kept) and check a label list.

    Raises LabelError naming the offending label and the limit.
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
        if len(label) > max_length:
            raise LabelError(
                f"label {label[:20]!r}… is {len(label)} characters long; the limit is {max_length}: shorten it",
                "too_long",
                label=label,
                length=len(label),
                limit=max_length,
            )
        if label not in seen:
            seen.add(label)
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
