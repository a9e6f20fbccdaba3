"""What every Wakeru cog holds: the App (config, label store, classifier, limiter) it serves."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import App


class WakeruCog(commands.Cog):
    def __init__(self, app: App | None):
        self._app = app  # None: the commands are only being registered (`python -m bot sync`)

    @property
    def app(self) -> App:
        if self._app is None:
            raise RuntimeError("Wakeru's commands run only in a running bot (this client only syncs them)")
        return self._app


def moderator_roles(interaction: discord.Interaction) -> tuple[int, ...]:
    """discord.moderator_role_ids, read from the cog the interaction's command belongs to."""
    command = interaction.command
    cog = command.binding if isinstance(command, app_commands.Command) else None
    if isinstance(cog, WakeruCog) and cog._app is not None:
        return cog._app.config.discord.moderator_role_ids
    return ()
