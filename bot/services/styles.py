"""How a channel answers image posts: its output style, where that style comes from, and the one reaction a
post gets in the reaction style.

Styles: "embed" (a reply), "reaction" (one emoji on the post), "tags" (forum and media posts get tags) and
"none" (classified and indexed, no answer). The chain is the labels' one: thread → parent → server, then
the default: "tags" in forum and media channels (and their posts), "embed" elsewhere. "tags" only means
something for a forum post, so a text channel that inherits it (from a server-wide setting) answers with the
embed instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.services.classifying import ImageAnswer
from bot.store import LabelStore
from wakeru.labels import label_emoji, label_name

STYLES = ("embed", "reaction", "tags", "none")

# Labels without an emoji of their own react with their place in the set: 1️⃣ … 🔟, then 🇦 … 🇿.
_KEYCAPS = [f"{n}\ufe0f\u20e3" for n in range(1, 10)] + ["\U0001f51f"]
_LETTERS = [chr(0x1F1E6 + n) for n in range(26)]
NUMBERED = tuple(_KEYCAPS + _LETTERS)
BEYOND_NUMBERED = "\U0001f3f7\ufe0f"  # 🏷️ for the 37th label on
UNSURE = "\u2753"  # ❓: none of the labels fits (the match rule)
FAILED = "\u26a0\ufe0f"  # ⚠️: the image could not be classified


def forum_of(channel: object) -> discord.ForumChannel | None:
    """The forum or media channel a channel is, or whose post (thread) it is; None otherwise."""
    if isinstance(channel, discord.ForumChannel):  # media channels are ForumChannels in discord.py
        return channel
    if isinstance(channel, discord.Thread) and isinstance(channel.parent, discord.ForumChannel):
        return channel.parent
    return None


def is_forum_post_start(message: discord.Message, channel: object) -> bool:
    """The starting message of a forum or media post: Discord gives it the thread's own id."""
    return isinstance(channel, discord.Thread) and message.id == channel.id and forum_of(channel) is not None


@dataclass(frozen=True, slots=True)
class StyleSource:
    style: str  # one of STYLES
    kind: str  # "channel" | "parent" | "server" | "default": where it was set
    channel_id: int | None = None


async def resolve_style(
    store: LabelStore, guild_id: int, channel_id: int | None, parent_id: int | None, *, forum: bool
) -> StyleSource:
    """The style in force for a channel (or thread, with its parent); `forum`: it is a forum or media
    channel or a post in one."""
    chain: list[tuple[int | None, str]] = [(channel_id, "channel"), (parent_id, "parent")]
    found: StyleSource | None = None
    for scope_id, kind in chain:
        if scope_id is not None and (style := await store.get_style(guild_id, scope_id)) is not None:
            found = StyleSource(style, kind, scope_id)
            break
    if found is None and (style := await store.get_style(guild_id, None)) is not None:
        found = StyleSource(style, "server")
    if found is None:
        return StyleSource("tags" if forum else "embed", "default")
    if found.style == "tags" and not forum:
        return StyleSource("embed", found.kind, found.channel_id)
    return found


def reaction_for(answer: ImageAnswer, labels: tuple[str, ...]) -> str:
    """The one reaction for an image's answer: the top label's emoji (`犬=🐕`), else its number in the set;
    ❓ when none of the labels fits, ⚠️ when the image could not be classified."""
    result = answer.result
    if not result.ok or not result.top:
        return FAILED
    if result.none_fits:
        return UNSURE
    top = result.top[0].label
    names = [label_name(label) for label in labels]
    if top not in names:  # the set changed while the image was being classified
        return UNSURE
    place = names.index(top)
    own = label_emoji(labels[place])
    if own is not None:
        return own
    return NUMBERED[place] if place < len(NUMBERED) else BEYOND_NUMBERED
