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
    roles = getattr(interaction.user, "roles", ())
    if moderator_role_ids and any(role.id in moderator_role_ids for role in roles):
        return None
    if scope == "server":
        return None if perms.manage_guild else "denied.server"
    return None if perms.manage_channels else "denied.channel"
