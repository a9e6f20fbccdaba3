"""The command tree: what runs before every command (shutdown refusal, request ids, in-flight
tracking) and the one error handler every command's failure ends in."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.face.checks import NotModerator
from bot.face.respond import refuse
from bot.face.texts import text
from wakeru.logs import bind_request_id, new_event_id

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger("wakeru.client")


def _command_name(interaction: discord.Interaction) -> object:
    """The command name Discord sent (for logs); None for interactions without one."""
    data: Mapping[str, object] = interaction.data or {}
    return data.get("name")


class WakeruTree(app_commands.CommandTree):
    @property
    def app(self) -> App | None:
        return getattr(self.client, "app", None)  # None while only syncing commands

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        app = self.app
        if app is None:
            return True
        if app.draining:  # SIGTERM: no new work; say so rather than leave the command spinning
            if interaction.type is discord.InteractionType.application_command:
                await refuse(interaction, text(interaction.locale, "shutting_down"))
            return False
        app.track()  # this task runs the command: shutdown waits for it
        bind_request_id(new_event_id())
        if interaction.type is discord.InteractionType.application_command:
            log.info(
                "command %s from user %s in channel %s",
                _command_name(interaction),
                interaction.user.id,
                interaction.channel_id,
            )
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Refused checks get their own explanation; everything else a reference the log also has."""
        locale = interaction.locale
        if isinstance(error, NotModerator):
            return await self._answer(interaction, text(locale, error.key))
        if isinstance(error, app_commands.NoPrivateMessage):
            return await self._answer(interaction, text(locale, "guild_only"))
        ref = uuid.uuid4().hex[:8]
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else None
        if isinstance(error, (app_commands.CommandNotFound, app_commands.CommandSignatureMismatch)):
            # Discord still has an older definition of the commands than this code
            log.error(
                "command %r does not match this version of Wakeru (ref %s): run `python -m bot sync` "
                "(with --guild ID if you synced to one server)",
                _command_name(interaction),
                ref,
            )
        elif isinstance(original, discord.NotFound) and original.code == 10062:
            # Unknown interaction: the 3-second window to answer had passed (a stalled loop or network)
            log.warning("interaction %s expired before Wakeru could answer it (ref %s)", interaction.id, ref)
            return
        else:
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("command %s failed (ref %s)", name, ref, exc_info=error)
        await self._answer(interaction, text(locale, "internal", ref=ref))

    @staticmethod
    async def _answer(interaction: discord.Interaction, message: str) -> None:
        try:
            await refuse(interaction, message)
        except discord.HTTPException:
            pass  # the interaction expired; the log has it
