"""Small helpers shared by the end-to-end tests that drive `python -m bot` through the fake Discord."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from tests.support import shapes

LABELS = "、".join(shapes.CLASSES)  # 赤い丸、赤い四角、青い丸、…


def png(label: str, seed: int = 0, size=(200, 150)) -> bytes:
    return shapes.encode(shapes.draw(label, size, random.Random(seed)), "PNG")


def jpeg(label: str, seed: int = 0) -> bytes:
    return shapes.encode(shapes.draw(label, (320, 240), random.Random(seed)), "JPEG", quality=92)


def labels_cmd(sub: str, **options) -> list[dict]:
    """/labels <sub> with these options: `channel` (an id) as a channel option, booleans as booleans, the rest
    as strings."""
    opts = []
    for name, value in options.items():
        if name == "channel":
            opts.append({"type": 7, "name": "channel", "value": str(value)})
        elif isinstance(value, bool):
            opts.append({"type": 5, "name": name, "value": value})
        else:
            opts.append({"type": 3, "name": name, "value": value})
    return [{"type": 1, "name": sub, "options": opts}]


def labels(fake, sub: str, *, by="moderator", channel_id=None, interact=None, **options) -> dict:
    """Run /labels <sub> as ``by`` in ``channel_id`` (``interact``: more FakeDiscord.interact keywords, such as
    a user install's context) and return its final answer."""
    command = labels_cmd(sub, **options)
    rec = fake.interact("labels", options=command, user=by, channel_id=channel_id, **(interact or {}))
    return rec.wait_final(timeout=60)


def top_label(embed: dict) -> str:
    first = embed["description"].splitlines()[0]
    return first.split("**")[1]


def error_code(embed: dict) -> str | None:
    """The error code a failed image's embed carries in its footer ("… · queue_full"), else None."""
    footer = (embed.get("footer") or {}).get("text", "")  # only failed images have a footer
    return footer.rsplit(" · ", 1)[1] if " · " in footer else None


def set_labels(fake, labels: str, channel_id=None, user="moderator", **extra) -> dict:
    rec = fake.interact("labels", options=labels_cmd("set", labels=labels, **extra), user=user, channel_id=channel_id)
    return rec.wait_final()


def replies_to(fake, posted: dict, since: int):
    return lambda m: (
        m["kind"] == "channel"
        and m["message_reference"] is not None
        and int(m["message_reference"]["message_id"]) == int(posted["id"])
    )


def post_and_wait(fake, channel_id, attachments, timeout: float = 60, **kw) -> dict:
    mark = fake.mark()
    posted = fake.post_message(channel_id, attachments=attachments, **kw)
    return fake.wait_for_message(replies_to(fake, posted, mark), since=mark, timeout=timeout)


def post_image(fake, channel_id, label: str, seed: int = 0, **kw) -> dict:
    """A member posts one PNG of ``label``; the posted message."""
    return fake.post_message(channel_id, attachments=[(f"{label}-{seed}.png", png(label, seed), "image/png")], **kw)


def replies(fake, since: int = 0) -> dict[str, list[dict]]:
    """post id → every channel reply the bot sent to it at or after ``since``."""
    found: dict[str, list[dict]] = {}
    for m in fake.sent_messages[since:]:
        ref = m["message_reference"]
        if m["kind"] == "channel" and ref:
            found.setdefault(str(ref["message_id"]), []).append(m)
    return found


def wait_replies(fake, posts: list[dict], since: int, timeout: float = 120) -> dict[str, dict]:
    """post id → the bot's (first) reply to it; fails if any post is left unanswered."""
    wanted = {str(p["id"]) for p in posts}

    def answered() -> dict[str, dict] | None:
        found = {k: v[0] for k, v in replies(fake, since).items() if k in wanted}
        return found if len(found) == len(wanted) else None

    return fake.wait_for(answered, timeout=timeout, what=f"a reply to each of {len(wanted)} posts")


def sentinel(fake, channel_ids, label: str = "緑の丸", seed: int = 5) -> None:
    """Negative checks wait for this instead of a fixed time: one more post per channel, each of
    which must be answered. Once they are, anything still owed for earlier posts (a duplicate, a
    retry, an answer that should not exist) would have been sent before them."""
    posts = [post_image(fake, channel, label, seed) for channel in channel_ids]
    answers = wait_replies(fake, posts, 0)
    assert all(top_label(a["embeds"][0]) == label for a in answers.values()), answers


@contextlib.contextmanager
def running_bot(fake, model: Path, workdir: Path, **options) -> Iterator:
    """`python -m bot` against ``fake`` with the fake's moderator role as discord.moderator_role_ids, stopped at the
    end; ``options``: BotProcess's (worker="stub", WAKERU_* overrides)."""
    from tests.support.bot_process import BotProcess

    options.setdefault("WAKERU_DISCORD__MODERATOR_ROLE_IDS", f"[{fake.moderator_role_id}]")
    bot = BotProcess(fake, model, workdir, **options)
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


def live_fake(world) -> Iterator:
    """The body of a module's `fake` fixture: the world's bot must still be alive, and the test must leave no
    request the fake did not know or found invalid."""
    import pytest

    fake, bot = world
    if bot.process.poll() is not None:
        pytest.fail(f"the bot died:\n{bot.log()}")
    yield fake
    assert not fake.unknown_requests, fake.unknown_requests
    assert not fake.invalid_requests, fake.invalid_requests
