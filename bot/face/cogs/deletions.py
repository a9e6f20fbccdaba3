"""The deletions cog: the index and members' corrections follow Discord. A deleted message, a bulk delete, an
edit that removes an attachment (index rows), a deleted channel or thread, and the bot leaving a server remove
the matching rows at once. Raw gateway events, so messages the bot never cached count too. Rows older than
`index.retention_days` are removed every hour. After each READY, channels and guilds deleted while the bot was
offline are found and their rows removed (bot.services.reconcile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import discord
from discord.ext import commands

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.services.reconcile import reconcile, shard_owner
from bot.store import StorageError

log = logging.getLogger("wakeru.index")

RETENTION_EVERY_S = 3600.0


class DeletionsCog(WakeruCog):
    _retention: asyncio.Task[None] | None = None

    def __init__(self, app: App | None, client: discord.Client):
        super().__init__(app)
        self._client = client

    async def cog_load(self) -> None:
        if self._app is not None:
            self._retention = asyncio.create_task(self._expire_loop(), name="index-retention")

    async def cog_unload(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention

    async def _expire_loop(self) -> None:
        while True:
            try:
                await self.app.indexer.expire()
            except StorageError as e:
                log.warning("retention: could not expire old rows: %s", e)
            await asyncio.sleep(RETENTION_EVERY_S)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """After every IDENTIFY (not a RESUME, which replays what was missed): remove what belongs to channels
        and guilds that went while no session was listening."""
        if self._app is None:
            return
        client = self._client
        present = {
            guild.id: None if guild.unavailable else frozenset(c.id for c in guild.channels) for guild in client.guilds
        }
        owns = shard_owner(client.shard_count, getattr(client, "shard_ids", None))
        try:
            done = await reconcile(self.app.index, self.app.store, present, owns)
        except Exception:  # a listener must survive whatever the database says
            log.exception("index: the start-up check failed")
            return
        log.info(
            "index: start-up check: %d gone guild(s), %d gone channel(s): removed %d row(s), %d correction(s)",
            done.guilds,
            done.channels,
            done.rows,
            done.corrections,
        )

    async def _forget(self, what: str, removal: Awaitable[int]) -> None:
        try:
            removed = await removal
        except StorageError as e:
            log.warning("index: could not remove the rows of %s: %s", what, e)
            return
        except Exception:  # a listener must survive whatever the database says
            log.exception("index: removing the rows of %s failed", what)
            return
        if removed:
            log.info("index: %s removed %d row(s)", what, removed)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self._app is not None:
            self.app.indexer.forget_later([payload.message_id])
            await self._forget(
                f"deleted message {payload.message_id}", self.app.index.delete_messages([payload.message_id])
            )
            if payload.guild_id is not None:
                await self._forget(
                    f"corrections of deleted message {payload.message_id}",
                    self.app.store.forget_corrections(payload.guild_id, message_ids=[payload.message_id]),
                )

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if self._app is not None:
            ids = list(payload.message_ids)
            self.app.indexer.forget_later(ids)
            await self._forget(f"{len(ids)} bulk-deleted message(s)", self.app.index.delete_messages(ids))
            if payload.guild_id is not None:
                await self._forget(
                    f"corrections of {len(ids)} bulk-deleted message(s)",
                    self.app.store.forget_corrections(payload.guild_id, message_ids=ids),
                )

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        attachments = payload.data.get("attachments")
        if self._app is None or attachments is None:  # an edit that does not touch the attachments
            return
        kept = [int(a["id"]) for a in attachments]
        await self._forget(
            f"edited message {payload.message_id}", self.app.index.keep_attachments(payload.message_id, kept)
        )
        await self._forget(
            f"corrections of edited message {payload.message_id}",
            self.app.store.keep_correction_attachments(payload.message_id, kept),
        )

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        if self._app is not None:
            self.app.indexer.forget_later([channel.id])
            self.app.backfills.cancel(channel.id)
            await self._forget(f"deleted channel {channel.id}", self.app.index.delete_channel(channel.id))
            await self._forget(
                f"corrections of deleted channel {channel.id}",
                self.app.store.forget_corrections(channel.guild.id, channel_id=channel.id),
            )

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        if self._app is not None:
            self.app.indexer.forget_later([payload.thread_id])
            self.app.backfills.cancel(payload.thread_id)
            await self._forget(f"deleted thread {payload.thread_id}", self.app.index.delete_channel(payload.thread_id))
            await self._forget(
                f"corrections of deleted thread {payload.thread_id}",
                self.app.store.forget_corrections(payload.guild_id, channel_id=payload.thread_id),
            )

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        if self._app is not None:
            for channel in [*guild.channels, *guild.threads]:
                self.app.backfills.cancel(channel.id)
            await self._forget(f"leaving guild {guild.id}", self.app.index.delete_guild(guild.id))
            await self._forget(f"corrections of guild {guild.id}", self.app.store.forget_corrections(guild.id))
