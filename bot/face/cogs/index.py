"""The index cog, /index: switch indexing and repost replies on or off, see the index's state, backfill
a channel's history, and forget a member's images.

The same permission rules as /labels: enable, disable, backfill and reposts carry the `moderator_only`
check; `forget` is for everyone about their own images, and for moderators (Manage Server) about
anyone's. Threads follow their parent channel: a switch set inside a thread is set on its parent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _T
from discord.ext import commands

from bot.app import App
from bot.face.checks import moderator_only, refusal_key
from bot.face.cogs.base import WakeruCog, moderator_roles
from bot.face.respond import announce, refuse, storage_error
from bot.face.texts import LocaleLike, text
from bot.services.backfill import HISTORY_TYPES, STALE_AFTER_S, Progress, Reporter
from bot.services.labelsets import parent_id, resolve
from bot.store import StorageError
from bot.store.images import BackfillJob

log = logging.getLogger("wakeru.index")

_SCOPES = [Choice(name=_T("channel"), value="channel"), Choice(name=_T("server"), value="server")]
_SCOPE_HELP = _T("This channel or the whole server")
_STATES = [Choice(name=_T("on"), value="on"), Choice(name=_T("off"), value="off")]
_BAR = 20


def progress_text(locale: LocaleLike, progress: Progress) -> str:
    """The backfill message: a bar, done / total, images per minute and the time left."""
    job = progress.job
    total = job.total or 0
    share = 1.0 if progress.finished and job.status == "done" else (job.done / total if total else 0.0)
    filled = round(share * _BAR)
    bar = "█" * filled + "░" * (_BAR - filled)
    if progress.eta_s is None:
        eta = text(locale, "backfill.eta_unknown")
    else:
        eta = text(locale, "backfill.eta", minutes=max(1, round(progress.eta_s / 60)))
    head = text(locale, f"backfill.{job.status}", channel=f"<#{job.channel_id}>", days=_days(job))
    line = text(
        locale,
        "backfill.line",
        percent=round(share * 100),
        done=job.done,
        total=total if job.total is not None else "?",
        rate=f"{progress.rate_per_min:.0f}",
        eta="" if progress.finished else eta,
    )
    text_ = f"{head}\n`{bar}` {line.rstrip(' ·')}".strip()
    if progress.skipped:
        text_ += "\n" + text(locale, "backfill.skipped", count=progress.skipped)
    return text_


def _days(job: BackfillJob) -> int:
    return max(1, round((job.started_at - job.since) / 86400))


class IndexCog(WakeruCog):
    def __init__(self, app: App | None, client: discord.Client):
        super().__init__(app)
        self._client = client

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._app is not None:  # after every (re)connect; jobs already running are left alone
            await self.resume_backfills(self._client)

    index = app_commands.Group(
        name=_T("index"),
        description=_T("The image index behind /search, similar images and repost replies"),
        guild_only=True,
    )

    # ---- switches --------------------------------------------------------------------

    @moderator_only(moderator_roles)
    @index.command(name=_T("enable"), description=_T("Index the images posted here (or in the whole server)"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def enable(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        await self._switch(interaction, scope, True)

    @moderator_only(moderator_roles)
    @index.command(name=_T("disable"), description=_T("Stop indexing images here (what is indexed stays)"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def disable(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        await self._switch(interaction, scope, False)

    async def _switch(self, interaction: discord.Interaction, scope: Choice[str] | None, enabled: bool) -> None:
        app, locale = self.app, interaction.locale
        guild_id = interaction.guild_id
        if guild_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        channel_id = None if scope is not None and scope.value == "server" else _scope_channel(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await app.index.set_enabled(guild_id, channel_id, enabled, user_id=interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        key = "index.enabled" if enabled else "index.disabled"
        where = (
            text(locale, "where.channel", channel=f"<#{channel_id}>") if channel_id else text(locale, "where.server")
        )
        await announce(interaction, text(locale, key, user=interaction.user.mention, where=where))

    @moderator_only(moderator_roles)
    @index.command(
        name=_T("reposts"), description=_T("Reply when an image posted here was already posted in this server")
    )
    @app_commands.rename(state=_T("state"))
    @app_commands.describe(state=_T("On or off"))
    @app_commands.choices(state=_STATES)
    async def reposts(self, interaction: discord.Interaction, state: Choice[str]) -> None:
        app, locale = self.app, interaction.locale
        guild_id = interaction.guild_id
        if guild_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        channel_id = _scope_channel(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await app.index.set_reposts(guild_id, channel_id, state.value == "on", user_id=interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        shown = text(locale, f"state.{state.value}")
        await announce(
            interaction,
            text(locale, "reposts.changed", user=interaction.user.mention, channel=f"<#{channel_id}>", state=shown),
        )

    # ---- reading ---------------------------------------------------------------------

    @index.command(name=_T("status"), description=_T("Whether this channel is indexed, and how much is indexed"))
    async def status(self, interaction: discord.Interaction) -> None:
        app, locale = self.app, interaction.locale
        guild_id, channel_id = interaction.guild_id, interaction.channel_id
        if guild_id is None or channel_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        model = app.indexer.model()
        try:
            switches = await app.indexer.switches(guild_id, channel_id, parent_id(interaction.channel))
            counts = await app.index.counts(guild_id, model)
            job = await app.index.get_backfill(channel_id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        lines = [
            text(locale, "status.indexing", state=text(locale, "state.on" if switches.indexing else "state.off")),
            text(locale, "status.reposts", state=text(locale, "state.on" if switches.reposts else "state.off")),
            text(locale, "status.count", count=counts.current, model=model),
        ]
        if counts.stale:
            lines.append(text(locale, "status.stale", count=counts.stale))
        if job is not None:
            if job.status == "running":
                share = f"{job.done / job.total:.0%}" if job.total else "?"
                lines.append(
                    text(locale, "status.backfill_running", done=job.done, total=job.total or "?", percent=share)
                )
            else:
                lines.append(
                    text(
                        locale,
                        f"status.backfill_{job.status}",
                        done=job.done,
                        when=f"<t:{int(job.updated_at)}:R>",
                    )
                )
        embed = discord.Embed(title=text(locale, "status.title")[:256], description="\n".join(lines))
        await interaction.followup.send(embed=embed, ephemeral=True)

    # ---- backfill --------------------------------------------------------------------

    @moderator_only(moderator_roles)
    @index.command(name=_T("backfill"), description=_T("Index the images already posted in this channel"))
    @app_commands.rename(days=_T("days"))
    @app_commands.describe(days=_T("How many days back (default 30)"))
    async def backfill(self, interaction: discord.Interaction, days: int | None = None) -> None:
        app, locale = self.app, interaction.locale
        guild_id, channel = interaction.guild_id, interaction.channel
        limit = app.config.index.backfill_max_days
        days = app.config.index.backfill_days if days is None else days
        if guild_id is None or channel is None:
            return await refuse(interaction, text(locale, "guild_only"))
        if not 1 <= days <= limit:
            return await refuse(interaction, text(locale, "backfill.bad_days", limit=limit))
        if not isinstance(channel, HISTORY_TYPES):
            return await refuse(interaction, text(locale, "backfill.no_history"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            labels = (await resolve(app.store, app.config, guild_id, channel.id, parent_id(channel))).labels
            job = await app.backfills.claim(app.backfills.new_job(guild_id, channel.id, interaction.user.id, days))
            if job is None:
                return await refuse(interaction, text(locale, "backfill.already"))
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        reply_locale = app.config.discord.reply_locale
        try:
            progress = await channel.send(
                progress_text(reply_locale, Progress(job, 0.0, None, False))
                + "\n-# "
                + text(reply_locale, "backfill.by", user=interaction.user.mention)
            )
        except discord.HTTPException as e:
            log.warning("backfill progress message not posted in %s: %s", channel.id, e)
            progress = None
        if progress is not None:
            job = replace(job, message=f"{channel.id}/{progress.id}")
            try:  # the job runs anyway; only a restart would lose the progress message
                await app.index.update_backfill(job)
            except StorageError as e:
                log.warning("backfill of channel %s: progress message not saved: %s", channel.id, e)
        await interaction.followup.send(
            text(locale, "backfill.started", days=days, link=progress.jump_url if progress else "—"), ephemeral=True
        )
        app.backfills.launch(job, channel, labels, _reporter(app.config.discord.reply_locale, progress))

    async def resume_backfills(self, client: discord.Client) -> None:
        """After a (re)start: carry on with the jobs this process (or a dead one) left running."""
        app = self.app
        try:
            jobs = await app.index.running_backfills([g.id for g in client.guilds])
        except StorageError as e:
            log.warning("could not look for backfills to resume: %s", e)
            return
        for job in jobs:
            if job.channel_id in app.backfills.tasks:
                continue
            if job.owner != app.backfills.owner and job.updated_at > time.time() - STALE_AFTER_S:
                continue  # another live process runs it
            channel = client.get_channel(job.channel_id)
            if channel is None:
                try:
                    channel = await client.fetch_channel(job.channel_id)
                except discord.HTTPException as e:
                    log.info("backfill of channel %s not resumed: %s", job.channel_id, e)
                    continue
            if not isinstance(channel, HISTORY_TYPES):
                continue
            try:
                taken = (
                    job
                    if job.owner == app.backfills.owner
                    else await app.backfills.claim(replace(job, owner=app.backfills.owner))
                )
            except StorageError as e:
                log.warning("backfill of channel %s not resumed: %s", job.channel_id, e)
                continue
            if taken is None:
                continue
            progress = None
            if job.message:
                try:
                    progress = await channel.fetch_message(int(job.message.split("/")[-1]))
                except (discord.HTTPException, ValueError):
                    progress = None
            try:
                labels = (await resolve(app.store, app.config, job.guild_id, channel.id, parent_id(channel))).labels
            except StorageError as e:
                log.warning("backfill of channel %s not resumed: %s", job.channel_id, e)
                continue
            log.info("resuming the backfill of channel %s at %d image(s)", job.channel_id, job.done)
            app.backfills.launch(taken, channel, labels, _reporter(app.config.discord.reply_locale, progress))

    # ---- forgetting ------------------------------------------------------------------

    @index.command(name=_T("forget"), description=_T("Remove your images (or a member's) from this server's index"))
    @app_commands.rename(user=_T("user"))
    @app_commands.describe(user=_T("Moderators: whose images to remove (default: yours)"))
    async def forget(self, interaction: discord.Interaction, user: discord.User | None = None) -> None:
        app, locale = self.app, interaction.locale
        guild_id = interaction.guild_id
        if guild_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        target = user or interaction.user
        if target.id != interaction.user.id:
            key = refusal_key(interaction, "server", app.config.discord.moderator_role_ids)
            if key is not None:
                return await refuse(interaction, text(locale, "forget.denied"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            removed = await app.index.delete_author(guild_id, target.id)
            corrections = await app.store.forget_corrections(guild_id, user_id=target.id)  # their choices too
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        log.info(
            "forget: %d image(s) and %d correction(s) of user %s removed in guild %s",
            removed,
            corrections,
            target.id,
            guild_id,
        )
        key = "forget.self" if target.id == interaction.user.id else "forget.other"
        await interaction.followup.send(text(locale, key, count=removed, user=target.mention), ephemeral=True)


def _scope_channel(interaction: discord.Interaction) -> int:
    """The channel a channel-scoped switch is set on: a thread's parent (threads follow it)."""
    channel = interaction.channel
    parent = parent_id(channel)
    if parent is not None:
        return parent
    assert interaction.channel_id is not None
    return interaction.channel_id


def _reporter(locale: LocaleLike, message: discord.Message | None) -> Reporter:
    """Edits the progress message (when it could be posted) with each report."""

    async def report(progress: Progress) -> None:
        if message is not None:
            await message.edit(content=progress_text(locale, progress))

    return report
