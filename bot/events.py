"""Gateway events: image posts in channels where auto-classify is on get a reply."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import discord

from .app import App
from .labelsets import auto_classify_enabled, parent_id, resolve
from .render import MAX_EMBEDS, reply, summary_line

log = logging.getLogger("wakeru.events")


async def on_image_post(app: App, message: discord.Message) -> None:
    if message.author.bot or message.guild is None or message.webhook_id is not None:
        return  # never answer bots (ourselves included) or webhooks: no reply loops
    images = [a for a in message.attachments if app.is_image(a)]
    if not images:
        return
    # an uncached thread arrives as a PartialMessageable; the guild cache knows its parent
    channel = message.guild.get_channel_or_thread(message.channel.id) or message.channel
    parent = parent_id(channel)
    guild_id = message.guild.id
    if not await auto_classify_enabled(app.store, app.config, guild_id, channel.id, parent):
        return
    source = await resolve(app.store, app.config, guild_id, channel.id, parent)
    async with AsyncExitStack() as stack:
        try:  # typing is a courtesy: a missing permission must not stop the answer
            await stack.enter_async_context(channel.typing())
        except Exception as e:  # noqa: BLE001 - Forbidden, a network error: the answer matters more
            log.debug("typing indicator failed in %s: %s", channel.id, e)
        answers = await app.classifier.classify_attachments(images[:MAX_EMBEDS], source.labels)
    locale = app.config.discord.reply_locale
    content, embeds = reply(answers, source, locale, app.config.discord.low_confidence, len(images))
    try:
        # fail_if_not_exists=False: if the post was deleted meanwhile, still answer in the channel
        await channel.send(content=content, embeds=embeds, mention_author=False,
                           reference=message.to_reference(fail_if_not_exists=False))
    except discord.HTTPException as e:
        log.warning("could not reply in channel %s: %s", channel.id, e)
        return
    log.info("message %s in %s: %s", message.id, channel.id, summary_line(answers))
