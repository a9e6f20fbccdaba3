"""The posts cog: image posts get a reply where auto-classify is on, are stored in the image index where
indexing is on, and get a repost note where repost replies are on (a gateway listener)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.face.render import MAX_EMBEDS, reply, summary_line
from bot.face.reposts import repost_reply
from bot.face.texts import rate_limit_text
from bot.services.classifying import ImageAnswer
from bot.services.indexing import Post, Switches
from bot.services.labelsets import auto_classify_enabled, parent_id, resolve
from bot.services.visibility import is_public_thread, readable_by
from bot.store import StorageError
from bot.store.images import SearchHit
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
    auto = await auto_classify_enabled(app.store, app.config, guild_id, channel.id, parent)
    try:
        switches = await app.indexer.switches(guild_id, channel.id, parent)
    except StorageError as e:  # the index's database failing must not cost the post its answer
        log.warning("image index switches unavailable for channel %s: %s", channel.id, e)
        switches = Switches(indexing=False, reposts=False)
    if not (auto or switches.indexing or switches.reposts):
        return
    log.info("image post %s in channel %s: %d image(s)", message.id, channel.id, len(images))
    locale = app.config.discord.reply_locale
    refusal = app.limiter.check(message.author.id, channel.id, min(len(images), MAX_EMBEDS))
    if refusal is not None:
        log.info("rate limited (%s): retry in %.0f s", refusal.scope, refusal.retry_after)
        if auto and app.limiter.should_tell(message.author.id, channel.id, refusal):
            await _send(channel, message, content=rate_limit_text(locale, refusal))
        return
    source = await resolve(app.store, app.config, guild_id, channel.id, parent)
    embed = switches.indexing or switches.reposts  # the embedding comes with the same forward pass
    async with AsyncExitStack() as stack:
        if auto:
            try:  # typing is a courtesy: a missing permission must not stop the answer
                await stack.enter_async_context(channel.typing())
            except Exception as e:
                log.debug("typing indicator failed in %s: %s", channel.id, e)
        answers = await app.classifier.classify_attachments(
            images[:MAX_EMBEDS], source.labels, source="post", embed=embed
        )
    # indexed before anything is sent: once a member sees an answer, search finds the picture too
    earlier = await _index_post(app, message, channel, parent, images, answers, switches) if embed else None
    if auto:
        content, embeds = reply(answers, source, locale, len(images))
        if await _send(channel, message, content=content, embeds=embeds):
            log.info("replied to message %s: %s", message.id, summary_line(answers))
    if earlier is not None:
        attachment_id, hit = earlier
        content, view = repost_reply(locale, attachment_id, hit.image)
        if await _send(channel, message, content=content, view=view, nonce=f"{message.id}r"):
            log.info("message %s: repost of message %s", message.id, hit.image.message_id)


async def _index_post(
    app: App,
    message: discord.Message,
    channel: MessageableChannel,
    parent: int | None,
    images: list[discord.Attachment],
    answers: list[ImageAnswer],
    switches: Switches,
) -> tuple[int, SearchHit] | None:
    """Look for an earlier copy first (an image is never its own), then store the images where indexing
    is on. Returns the first image that is a repost and its earlier copy, if repost replies are on."""
    assert message.guild is not None
    post = Post(message.guild.id, channel.id, parent, message.id, message.author.id, message.created_at.timestamp())
    earlier: tuple[int, SearchHit] | None = None
    try:
        for attachment, answer in zip(images, answers):
            if switches.reposts and earlier is None:
                scope, allowed = repost_scope(message.guild, channel.id, parent)
                hit = await app.indexer.earlier_copy(post, attachment.id, answer, scope, allowed)
                earlier = (attachment.id, hit) if hit is not None else None
            if switches.indexing and await app.indexer.record(post, attachment.id, answer):
                log.info("indexed image %s of message %s", attachment.id, message.id)
    except StorageError as e:
        log.warning("could not index message %s: %s", message.id, e)
    except Exception:  # the answer must still go out, whatever the index does
        log.exception("indexing message %s failed", message.id)
    return earlier


def repost_scope(
    guild: discord.Guild, channel_id: int, parent: int | None
) -> tuple[set[int], Callable[[SearchHit], Awaitable[bool]]]:
    """Where an earlier copy may be from. A repost reply is public in this channel, so it only ever links posts
    of this channel (or thread) and its parent, or of channels everyone in the server can read, and of public
    threads of those: never a private thread. Returns the channels for the store's filter (which also matches
    their threads) and the check of each candidate."""
    scope = readable_by(guild, guild.default_role) | {channel_id} | ({parent} if parent is not None else set())

    async def allowed(hit: SearchHit) -> bool:
        image = hit.image
        if image.channel_id == channel_id:
            return True
        if image.parent_id is None:
            return image.channel_id in scope
        return image.parent_id in scope and await is_public_thread(guild, image.channel_id)

    return scope, allowed


async def _send(
    channel: MessageableChannel, message: discord.Message, *, nonce: str | None = None, **fields: Any
) -> bool:
    """Reply to a post. The nonce (the post's id; another one per kind of reply, or Discord would take a
    repost note for a repeat of the answer) lets Discord drop a duplicate when discord.py retries a send that
    Discord did process but answered with a 5xx."""
    try:
        # fail_if_not_exists=False: if the post was deleted meanwhile, still answer in the channel
        await channel.send(
            **fields,
            mention_author=False,
            nonce=nonce or message.id,
            reference=message.to_reference(fail_if_not_exists=False),
        )
    except discord.HTTPException as e:
        log.warning("could not reply in channel %s: %s", channel.id, e)
        return False
    return True
