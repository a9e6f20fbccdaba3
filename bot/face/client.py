"""The discord.py client: intents, allowed mentions, the cogs, sharding.

A `commands.Bot` only for its cogs: Wakeru has no prefix commands (on_message does nothing
itself; the posts cog listens for images)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot.app import App
from bot.face.cogs import make_cogs
from bot.face.corrections import FixSelect, WrongButton
from bot.face.reposts import NotRepostButton
from bot.face.texts import CommandTranslator
from bot.face.tree import WakeruTree
from bot.services import metrics
from wakeru.config import Config

log = logging.getLogger("wakeru.client")


def intents(message_content: bool) -> discord.Intents:
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = message_content  # privileged: must be enabled in the Developer Portal
    # the server's custom emoji, kept current (not privileged): `猫=<:neko:1234>` must be an emoji of this server
    wanted.emojis_and_stickers = True
    return wanted


if TYPE_CHECKING:
    # what the mixin is always combined with (Bot or AutoShardedBot), so that its methods are checked
    # against the client they run in; at run time it stays a plain mixin in front of that class
    _ClientBase = commands.Bot
else:
    _ClientBase = object


class WakeruBehaviour(_ClientBase):
    """What every Wakeru client does, sharded or not (mixed in before the discord.py client class)."""

    app: App | None

    def __init__(self, app: App | None, *, message_content: bool = True, **options: Any) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=WakeruTree,
            intents=intents(message_content),
            allowed_mentions=discord.AllowedMentions.none(),
            chunk_guilds_at_startup=False,
            **options,
        )
        self.app = app  # None when only syncing commands

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CommandTranslator())
        for cog in make_cogs(self.app, self):
            await self.add_cog(cog)
        # the buttons and selects of answers keep working after a restart: their custom ids say what they are for
        self.add_dynamic_items(NotRepostButton, WrongButton, FixSelect)
        if self.app is not None:
            await self.app.start()

    async def on_ready(self) -> None:
        metrics.GATEWAY_SESSIONS.labels("ready").inc()
        assert self.user is not None  # on_ready follows READY, which sets the bot's own user
        log.info("connected as %s (id %s) to %d server(s)", self.user, self.user.id, len(self.guilds))

    async def on_resumed(self) -> None:
        metrics.GATEWAY_SESSIONS.labels("resumed").inc()
        log.info("gateway session resumed")

    async def on_message(self, message: discord.Message) -> None:
        pass  # no prefix commands; image posts go to the posts cog's listener


class WakeruClient(WakeruBehaviour, commands.Bot):
    """One gateway connection (discord.shard_count null): enough for up to 2,500 servers."""

    def __init__(self, app: App | None, *, message_content: bool = True):
        super().__init__(app, message_content=message_content)


def describe_shards(shard_ids: Sequence[int] | None, shard_count: int | None) -> str:
    """For logs: 'shards 0,1 of 4' (shard_ids None: all of them; shard_count None: not known yet, "auto")."""
    total = "?" if shard_count is None else str(shard_count)
    if shard_ids is None:
        if shard_count is None:
            return "all shards (count from Discord)"
        shard_ids = range(shard_count)
    ids = list(shard_ids)
    return f"shard{'s' if len(ids) != 1 else ''} {','.join(map(str, ids))} of {total}"


class WakeruShardedClient(WakeruBehaviour, commands.AutoShardedBot):
    """Several gateway connections in one process (discord.shard_count set): the shards in
    ``shard_ids`` (None: all) out of ``shard_count`` (None: Discord's recommendation, asked from
    GET /gateway/bot). Each server's events arrive on shard ``(guild_id >> 22) % shard_count`` only,
    so several processes, each with its own ``shard_ids``, split the servers between them."""

    def __init__(
        self,
        app: App | None,
        *,
        shard_count: int | None,
        shard_ids: Sequence[int] | None = None,
        message_content: bool = True,
    ):
        super().__init__(
            app,
            message_content=message_content,
            shard_count=shard_count,
            shard_ids=list(shard_ids) if shard_ids is not None else None,
        )

    def describe_shards(self) -> str:
        return describe_shards(self.shard_ids, self.shard_count)

    async def launch_shards(self) -> None:
        # discord.py declares AutoShardedClient.shard_count an int, but it is None until Discord is asked ("auto")
        shard_count = cast("int | None", self.shard_count)
        if shard_count is None and not self.is_closed():
            # "auto": ask Discord here rather than in discord.py, which would then also take the
            # gateway URL from the answer and ignore discord.gateway_url (a proxy, the tests' fake)
            count, _url, limits = await self.http.get_bot_gateway()
            self.shard_count = count
            log.info(
                "sharding: Discord recommends %d shard(s) (identify concurrency %s, %s session starts left)",
                count,
                limits.get("max_concurrency"),
                limits.get("remaining"),
            )
        log.info("sharding: this process runs %s", self.describe_shards())
        await super().launch_shards()

    # discord.py fires on_ready once every shard of this process is ready, and on_shard_ready /
    # on_shard_resumed for each shard (on_resumed too): count the sessions per shard.
    async def on_ready(self) -> None:
        assert self.user is not None  # on_ready follows READY, which sets the bot's own user
        log.info(
            "connected as %s (id %s) to %d server(s) on %s",
            self.user,
            self.user.id,
            len(self.guilds),
            self.describe_shards(),
        )

    async def on_shard_ready(self, shard_id: int) -> None:
        metrics.GATEWAY_SESSIONS.labels("ready").inc()
        servers = sum(1 for g in self.guilds if g.shard_id == shard_id)
        log.info("shard %d of %s ready: %d server(s)", shard_id, self.shard_count, servers)

    async def on_resumed(self) -> None:
        pass  # counted and logged per shard below

    async def on_shard_resumed(self, shard_id: int) -> None:
        metrics.GATEWAY_SESSIONS.labels("resumed").inc()
        log.info("gateway session resumed (shard %d of %s)", shard_id, self.shard_count)


def make_client(app: App | None, config: Config, *, message_content: bool = True) -> WakeruClient | WakeruShardedClient:
    """The client discord.shard_count asks for: null → one connection; a number or "auto" → sharded,
    running discord.shard_ids (null: every shard)."""
    count = config.discord.shard_count
    if count is None:
        return WakeruClient(app, message_content=message_content)
    return WakeruShardedClient(
        app,
        message_content=message_content,
        shard_count=None if count == "auto" else count,
        shard_ids=config.discord.shard_ids,
    )
