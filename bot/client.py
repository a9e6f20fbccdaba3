"""The discord.py client: intents, allowed mentions, the command tree and its error handler."""

from __future__ import annotations

import logging
import uuid

import discord
from discord import app_commands

from wakeru.logs import bind_request_id, new_event_id

from . import metrics
from .app import App
from .commands import add_commands, refuse
from .events import on_image_post
from .i18n import CommandTranslator, text

log = logging.getLogger("wakeru.client")


def intents(message_content: bool) -> discord.Intents:
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = message_content  # privileged: must be enabled in the Developer Portal
    return wanted


class WakeruTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        app = self.client.app
        if app is None:
            return True
        if app.draining:  # SIGTERM: no new work; say so rather than leave the command spinning
            if interaction.type is discord.InteractionType.application_command:
                await refuse(interaction, text(interaction.locale, "shutting_down"))
            return False
        app.track()  # this task runs the command: shutdown waits for it
        bind_request_id(new_event_id())
        if interaction.type is discord.InteractionType.application_command:
            log.info("command %s from user %s in channel %s", interaction.data.get("name"), interaction.user.id,
                     interaction.channel_id)
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        ref = uuid.uuid4().hex[:8]
        if isinstance(error, (app_commands.CommandNotFound, app_commands.CommandSignatureMismatch)):
            # Discord still has an older definition of the commands than this code
            log.error("command %r does not match this version of Wakeru (ref %s): run `python -m bot sync` "
                      "(with --guild ID if you synced to one server)", interaction.data.get("name"), ref)
        elif isinstance(getattr(error, "original", None), discord.NotFound) and error.original.code == 10062:
            # Unknown interaction: the 3-second window to answer had passed (a stalled loop or network)
            log.warning("interaction %s expired before Wakeru could answer it (ref %s)", interaction.id, ref)
            return
        else:
            log.error("command %s failed (ref %s)", getattr(interaction.command, "qualified_name", "?"), ref,
                      exc_info=error)
        try:
            await refuse(interaction, text(interaction.locale, "internal", ref=ref))
        except discord.HTTPException:
            pass  # the interaction expired; the log has it


class WakeruClient(discord.Client):
    def __init__(self, app: App | None, *, message_content: bool = True):
        super().__init__(intents=intents(message_content), allowed_mentions=discord.AllowedMentions.none(),
                         chunk_guilds_at_startup=False)
        self.app = app  # None when only syncing commands
        self.tree = WakeruTree(self)

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CommandTranslator())
        add_commands(self.tree)
        if self.app is not None:
            await self.app.start()

    async def on_ready(self) -> None:
        metrics.GATEWAY_SESSIONS.labels("ready").inc()
        log.info("connected as %s (id %s) to %d server(s)", self.user, self.user.id, len(self.guilds))

    async def on_resumed(self) -> None:
        metrics.GATEWAY_SESSIONS.labels("resumed").inc()
        log.info("gateway session resumed")

    async def on_message(self, message: discord.Message) -> None:
        if self.app is not None:
            await on_image_post(self.app, message)
