"""bot.services.corrections: the agreement rate, the confusions, and each image's consensus label."""

from __future__ import annotations

from bot.services.corrections import consensus, summarise
from bot.store import Correction


def fix(attachment: int, user: int, shown: str, chosen: str | None, at: float = 0.0) -> Correction:
    return Correction(
        guild_id=1,
        channel_id=10,
        parent_id=None,
        message_id=attachment * 10,
        attachment_id=attachment,
        user_id=user,
        shown=shown,
        chosen=chosen,
        labels=("犬", "猫", "鳥"),
        at=at,
    )


def test_agreement_and_confusions():
    rows = [fix(1, 1, "犬", "犬"), fix(1, 2, "犬", "猫"), fix(2, 1, "犬", "猫"), fix(3, 1, "猫", None)]
    summary = summarise(rows)
    assert (summary.corrections, summary.images, summary.agreed) == (4, 3, 1)
    assert summary.agreement == 0.25
    assert summary.confusions == [(("犬", "猫"), 2), (("猫", None), 1)]
    assert summarise([]).agreement == 0.0


def test_consensus_is_the_most_chosen_then_the_latest():
    rows = [
        fix(1, 1, "犬", "猫", at=1),
        fix(1, 2, "犬", "猫", at=2),
        fix(1, 3, "犬", "鳥", at=3),
        fix(2, 1, "犬", "鳥", at=5),
        fix(2, 2, "犬", "猫", at=4),
        fix(3, 1, "犬", None, at=1),
    ]
    chosen = consensus(rows)
    assert chosen[1].chosen == "猫" and chosen[2].chosen == "鳥" and chosen[3].chosen is None
