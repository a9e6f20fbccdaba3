"""What members' corrections say about a label set: how often the answer was right, and which labels get
corrected into which (/labels stats, the export)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.store import Correction


@dataclass(frozen=True, slots=True)
class CorrectionSummary:
    corrections: int  # members' choices
    images: int  # images with at least one
    agreed: int  # choices that confirmed the shown label
    confusions: list[tuple[tuple[str, str | None], int]]  # (shown, chosen) → count, most frequent first

    @property
    def agreement(self) -> float:
        """The share of members' choices that kept the label the answer showed."""
        return self.agreed / self.corrections if self.corrections else 0.0


def summarise(corrections: Iterable[Correction]) -> CorrectionSummary:
    rows = list(corrections)
    agreed = sum(1 for c in rows if c.chosen == c.shown)
    confusions = Counter((c.shown, c.chosen) for c in rows if c.chosen != c.shown)
    return CorrectionSummary(
        corrections=len(rows),
        images=len({c.attachment_id for c in rows}),
        agreed=agreed,
        confusions=sorted(confusions.items(), key=lambda item: (-item[1], item[0][0], item[0][1] or "")),
    )


def consensus(corrections: Sequence[Correction]) -> dict[int, Correction]:
    """Each image's label by its members' choices: the most chosen (ties: the latest choice among them);
    "none of these" counts as a choice, so such an image maps to a correction whose `chosen` is None."""
    by_image: dict[int, list[Correction]] = {}
    for correction in corrections:
        by_image.setdefault(correction.attachment_id, []).append(correction)
    result = {}
    for attachment_id, rows in by_image.items():
        votes = Counter(c.chosen for c in rows)
        top = max(votes.values())
        winners = {choice for choice, count in votes.items() if count == top}
        result[attachment_id] = max((c for c in rows if c.chosen in winners), key=lambda c: c.at)
    return result
