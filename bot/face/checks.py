"""Who may change label sets: checked at run time on every mutating command.

`default_permissions` on the command group only hides commands by default and
server admins can change it, so it is never relied on.
"""

from __future__ import annotations

import discord


def refusal_key(interaction: discord.Interaction, scope: str, moderator_role_ids: tuple[int, ...]) -> str | None:
    """None if the user may change `scope` ("channel" | "server"), else the i18n key of the refusal."""
    perms = interaction.permissions  # resolved for this channel by Discord (overwrites included)
    if perms.administrator:
        return None
    # the raw role ids of the interaction's member: Member.roles drops roles missing from the cache
    role_ids = set(getattr(interaction.user, "_roles", ())) | {r.id for r in getattr(interaction.user, "roles", ())}
    if moderator_role_ids and role_ids & set(moderator_role_ids):
        return None
    if scope == "server":
        return None if perms.manage_guild else "denied.server"
    return None if perms.manage_channels else "denied.channel"
