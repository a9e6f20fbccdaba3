"""Which labels apply where: thread → parent channel → server default → config default.

Also the auto-classify decision, which follows the same chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.store import LabelStore
from wakeru.config import Config


def parent_id(channel: object) -> int | None:
    """The channel a thread belongs to (its labels and auto switch are inherited); None otherwise."""
    return channel.parent_id if isinstance(channel, discord.Thread) else None


@dataclass(frozen=True, slots=True)
class LabelSource:
    """A label set and where it came from (rendering says it in words, for the reply's footer)."""

    kind: str  # "channel" | "parent" | "server" | "default" | "adhoc" | "me"
    labels: tuple[str, ...]
    channel_id: int | None = None
    version: int | None = None


async def resolve(
    store: LabelStore, config: Config, guild_id: int | None, channel_id: int | None, parent_id: int | None = None
) -> LabelSource:
    if guild_id is not None:
        chain = [(channel_id, "channel"), (parent_id, "parent")]
        for scope_id, kind in chain:
            if scope_id is not None:
                own = await store.get(guild_id, scope_id)
                if own is not None:
                    return LabelSource(kind, own.labels, scope_id, own.version)
        server = await store.get(guild_id, None)
        if server is not None:
            return LabelSource("server", server.labels, None, server.version)
    return LabelSource("default", config.labels.default)


# A member's own label set (/labels … scope:me), for the app they installed on their account: stored as the
# scope (PERSONAL_SETS, their user id). Discord never issues the guild id 0.
PERSONAL_SETS = 0


async def resolve_personal(store: LabelStore, config: Config, user_id: int) -> LabelSource:
    """A member's own set, else the configured default."""
    own = await store.get(PERSONAL_SETS, user_id)
    if own is not None:
        return LabelSource("me", own.labels, None, own.version)
    return LabelSource("default", config.labels.default)


async def inherited(
    store: LabelStore, config: Config, guild_id: int, channel_id: int | None, parent_id: int | None
) -> LabelSource:
    """What a scope falls back to without its own set (the base for /labels add on a new scope)."""
    if channel_id is None:  # the server default falls back to the config default
        return LabelSource("default", config.labels.default)
    return await resolve(store, config, guild_id, None, parent_id)


async def auto_classify_enabled(
    store: LabelStore, config: Config, guild_id: int, channel_id: int, parent_id: int | None
) -> bool:
    """A channel's own /labels auto switch wins (a thread inherits its parent's); else the config mode."""
    for scope_id in (channel_id, parent_id):
        if scope_id is not None:
            override = await store.get_auto(guild_id, scope_id)
            if override is not None:
                return override
    mode = config.discord.auto_classify
    if mode == "all":
        return True
    if mode == "off":
        return False
    for scope_id in (channel_id, parent_id):  # labeled_channels: a set of its own (not the server's)
        if scope_id is not None and await store.get(guild_id, scope_id) is not None:
            return True
    return False
