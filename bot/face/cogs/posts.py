"""The posts cog: image posts in channels where auto-classify is on get a reply (a gateway listener)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.face.render import MAX_EMBEDS, reply, summary_line
from bot.face.texts import rate_limit_text
from bot.services.labelsets import auto_classify_enabled, parent_id, resolve
from wakeru.logs import new_event_id, request_context

if TYPE_CHECKING:
    from discord.abc import MessageableChannel

log = logging.getLogger("wakeru.events")


class PostsCog(WakeruCog):
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self._app is not None:
            await on_image_post(self._app, message)


async def on_image_post(app: App, message: discord.Message) -> None:
    if message.author.bot or message.guild is None or message.webhook_id is not None:
        return  # never answer bots (ourselves included) or webhooks: no reply loops
    images = [a for a in message.attachments if app.is_image(a)]
    if not images or app.draining:
        return  # shutting down: a post is not a request; the next bot process will not see it either
    app.track()
    with request_context(new_event_id()):
        await _classify_post(app, message, images)


async def _classify_post(app: App, message: discord.Message, images: list[discord.Attachment]) -> None:
    assert message.guild is not None  # on_image_post answers posts in servers only
    # an uncached thread arrives as a PartialMessageable; the guild cache knows its parent
    channel = message.guild.get_channel_or_thread(message.channel.id) or message.channel
    assert isinstance(channel, discord.abc.Messageable)  # a message's channel: never a forum or a category
    parent = parent_id(channel)
    guild_id = message.guild.id
    if not await auto_classify_enabled(app.store, app.config, guild_id, channel.id, parent):
        return
    log.info("image post %s in channel %s: %d image(s)", message.id, channel.id, len(images))
    locale = app.config.discord.reply_locale
    refusal = app.limiter.check(message.author.id, channel.id, min(len(images), MAX_EMBEDS))
    if refusal is not None:
        log.info("rate limited (%s): retry in %.0f s", refusal.scope, refusal.retry_after)
        if app.limiter.should_tell(message.author.id, channel.id, refusal):
            await _send(channel, message, content=rate_limit_text(locale, refusal))
        return
    source = await resolve(app.store, app.config, guild_id, channel.id, parent)
    async with AsyncExitStack() as stack:
        try:  # typing is a courtesy: a missing permission must not stop the answer
            await stack.enter_async_context(channel.typing())
        except Exception as e:
            log.debug("typing indicator failed in %s: %s", channel.id, e)
        answers = await app.classifier.classify_attachments(images[:MAX_EMBEDS], source.labels, source="post")
    content, embeds = reply(answers, source, locale, len(images))
    if await _send(channel, message, content=content, embeds=embeds):
        log.info("replied to message %s: %s", message.id, summary_line(answers))


async def _send(channel: MessageableChannel, message: discord.Message, **fields: Any) -> bool:
    """Reply to a post. The nonce (the post's id) lets Discord drop a duplicate when
    discord.py retries a send that Discord did process but answered with a 5xx."""
    try:
        # fail_if_not_exists=False: if the post was deleted meanwhile, still answer in the channel
        await channel.send(
            **fields, mention_author=False, nonce=message.id, reference=message.to_reference(fail_if_not_exists=False)
        )
    except discord.HTTPException as e:
        log.warning("could not reply in channel %s: %s", channel.id, e)
        return False
    return True
