"""Who may change label sets: `app_commands.check` predicates, checked by discord.py before a
command runs; a failure is answered privately by the tree's one error handler (tree.py).

`default_permissions` on the command group only hides commands by default and server admins
can change it, so it is never relied on: these checks run on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import discord
from discord import app_commands

T = TypeVar("T")


class NotModerator(app_commands.CheckFailure):
    """The member may not change this scope; `key` is the text that tells them why."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def refusal_key(
    interaction: discord.Interaction,
    scope: str,
    moderator_role_ids: tuple[int, ...],
    permissions: discord.Permissions | None = None,
) -> str | None:
    """None if the user may change `scope` ("channel" | "server" | "me": their own set, always), else the text
    key of the refusal. `permissions`: the member's in the channel the command is about, when that is not the
    one it was run in (a `channel:` option)."""
    if scope == "me" or interaction.guild_id is None or not _bot_is_here(interaction):
        # their own set; outside the bot's servers (a DM, a member's own install) only that exists, and the
        # command itself says so
        return None
    # resolved for the channel by Discord (overwrites included)
    perms = permissions if permissions is not None else interaction.permissions
    if perms.administrator:
        return None
    # the raw role ids of the interaction's member: Member.roles drops roles missing from the cache
    role_ids = set(getattr(interaction.user, "_roles", ())) | {r.id for r in getattr(interaction.user, "roles", ())}
    if moderator_role_ids and role_ids & set(moderator_role_ids):
        return None
    if scope == "server":
        return None if perms.manage_guild else "denied.server"
    return None if perms.manage_channels else "denied.channel"


def _bot_is_here(interaction: discord.Interaction) -> bool:
    """The server the interaction comes from has the bot (not only a member's own install of the app)."""
    check = getattr(interaction, "is_guild_integration", None)
    return bool(check()) if callable(check) else True


def requested_scope(interaction: discord.Interaction) -> str:
    """The `scope` option of the command being run: "server", "me" or (the default) "channel"."""
    scope: Any = getattr(interaction.namespace, "scope", None)
    value = getattr(scope, "value", scope)  # a Choice, or its raw value
    return value if value in ("server", "me") else "channel"


def channel_permissions(interaction: discord.Interaction) -> discord.Permissions | None:
    """The member's permissions in the channel a `channel:` option names (Discord resolves them with the
    option), None without one."""
    channel: Any = getattr(interaction.namespace, "channel", None)
    permissions = getattr(channel, "permissions", None)
    return permissions if isinstance(permissions, discord.Permissions) else None


def moderator_only(moderator_role_ids: Callable[[discord.Interaction], tuple[int, ...]]) -> Callable[[T], T]:
    """Only administrators, members with discord.moderator_role_ids, and members who may manage the
    scope the command changes (Manage Channels for a channel, Manage Server for the server)."""

    def predicate(interaction: discord.Interaction) -> bool:
        scope = requested_scope(interaction)
        # a channel: option names the channel whose permissions count; the server's are the same everywhere
        permissions = channel_permissions(interaction) if scope == "channel" else None
        key = refusal_key(interaction, scope, moderator_role_ids(interaction), permissions)
        if key is not None:
            raise NotModerator(key)
        return True

    return app_commands.check(predicate)
