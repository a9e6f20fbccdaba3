"""The posts cog: image posts are answered where auto-classify is on, in the channel's style (a reply with
a "Wrong?" button, one reaction, or a forum post's tags; services/styles.py), are stored in the image index
where indexing is on, and get a repost note where repost replies are on (a gateway listener)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.face.corrections import correction_view
from bot.face.render import MAX_EMBEDS, reply, summary_line
from bot.face.reposts import repost_reply
from bot.face.texts import rate_limit_text
from bot.services.classifying import ImageAnswer
from bot.services.indexing import Post, Switches
from bot.services.labelsets import LabelSource, auto_classify_enabled, parent_id, resolve
from bot.services.styles import forum_of, is_forum_post_start, reaction_for, resolve_style
from bot.services.tagging import MAX_APPLIED_TAGS, best_labels, matching_tags, tags_to_apply
from bot.services.visibility import is_public_thread, readable_by
from bot.store import StorageError
from bot.store.images import SearchHit
from wakeru.labels import custom_emoji_id, label_name
from wakeru.logs import new_event_id, request_context

if TYPE_CHECKING:
    from discord.abc import MessageableChannel

log = logging.getLogger("wakeru.events")

UNKNOWN_EMOJI = 10014  # Discord's error code for a custom emoji that does not exist (any more)


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
    guild = message.guild
    channel = await _channel_of(message)
    parent = parent_id(channel)
    guild_id = guild.id
    auto = await auto_classify_enabled(app.store, app.config, guild_id, channel.id, parent)
    try:
        switches = await app.indexer.switches(guild_id, channel.id, parent)
    except StorageError as e:  # the index's database failing must not cost the post its answer
        log.warning("image index switches unavailable for channel %s: %s", channel.id, e)
        switches = Switches(indexing=False, reposts=False)
    if not (auto or switches.indexing or switches.reposts):
        return
    style = (await resolve_style(app.store, guild_id, channel.id, parent, forum=forum_of(channel) is not None)).style
    if style == "tags" and not is_forum_post_start(message, channel):
        style = "none"  # tags belong to the post; the images of later messages in it are only classified
    answering = auto and style != "none"
    log.info("image post %s in channel %s: %d image(s), style %s", message.id, channel.id, len(images), style)
    locale = app.config.discord.reply_locale
    refusal = app.limiter.check(message.author.id, channel.id, min(len(images), MAX_EMBEDS))
    if refusal is not None:
        log.info("rate limited (%s): retry in %.0f s", refusal.scope, refusal.retry_after)
        if answering and style == "embed" and app.limiter.should_tell(message.author.id, channel.id, refusal):
            await _send(channel, message, content=rate_limit_text(locale, refusal))
        return
    source = await resolve(app.store, app.config, guild_id, channel.id, parent)
    embed = switches.indexing or switches.reposts  # the embedding comes with the same forward pass
    async with AsyncExitStack() as stack:
        if answering and style == "embed":  # a reply is coming: say so (a reaction or tags come quietly)
            try:  # typing is a courtesy: a missing permission must not stop the answer
                await stack.enter_async_context(channel.typing())
            except Exception as e:
                log.debug("typing indicator failed in %s: %s", channel.id, e)
        answers = await app.classifier.classify_attachments(
            images[:MAX_EMBEDS],
            source.labels,
            source="post",
            embed=embed,
            top_k=MAX_APPLIED_TAGS if style == "tags" else 3,
        )
    # indexed before anything is sent: once a member sees an answer, search finds the picture too
    earlier = await _index_post(app, message, channel, parent, images, answers, switches) if embed else None
    if answering:
        await _answer(app, message, channel, style, answers, source, len(images))
    elif auto:
        log.info("classified message %s without answering (style none): %s", message.id, summary_line(answers))
    if earlier is not None:
        attachment_id, hit = earlier
        content, view = repost_reply(locale, attachment_id, hit.image)
        if await _send(channel, message, content=content, view=view, nonce=f"{message.id}r"):
            log.info("message %s: repost of message %s", message.id, hit.image.message_id)


async def _channel_of(message: discord.Message) -> MessageableChannel:
    """The post's channel, as a full object where one can be had: an uncached thread arrives as a
    PartialMessageable (the guild cache knows it, or it is fetched: a forum post's tags need the Thread)."""
    assert message.guild is not None
    cached = message.guild.get_channel_or_thread(message.channel.id)
    if cached is None and isinstance(message.channel, discord.PartialMessageable):
        try:
            fetched = await message.guild.fetch_channel(message.channel.id)
            cached = fetched if isinstance(fetched, discord.Thread) else None
        except discord.HTTPException as e:
            log.debug("channel %s of message %s not fetched: %s", message.channel.id, message.id, e)
    channel = cached or message.channel
    assert isinstance(channel, discord.abc.Messageable)  # a message's channel: never a forum or a category
    return channel


async def _answer(
    app: App,
    message: discord.Message,
    channel: MessageableChannel,
    style: str,
    answers: list[ImageAnswer],
    source: LabelSource,
    total: int,
) -> None:
    """Answer the way the channel wants: a reply (embed), one reaction, or the post's tags."""
    locale = app.config.discord.reply_locale
    if style == "reaction":
        # the first image that could be read speaks for the post (⚠️ only when none could)
        answer = next((a for a in answers if a.result.ok), answers[0])
        emoji = reaction_for(answer, source.labels)
        failed = await _react(app, message, channel, emoji)
        if failed is not None and failed.code == UNKNOWN_EMOJI and custom_emoji_id(emoji) is not None:
            # the label's own emoji was deleted from the server: its number instead
            await _react(app, message, channel, reaction_for(answer, tuple(map(label_name, source.labels))))
    elif style == "tags":
        assert isinstance(channel, discord.Thread)  # is_forum_post_start
        await apply_tags(app, channel, answers)
    else:
        content, embeds = reply(answers, source, locale, total)
        ok = any(a.result.ok for a in answers)
        view = correction_view(locale, channel.id, message.id) if ok else None
        fields: dict[str, Any] = {"view": view} if view is not None else {}
        if await _send(channel, message, content=content, embeds=embeds, **fields):
            log.info("replied to message %s: %s", message.id, summary_line(answers))


async def _react(
    app: App, message: discord.Message, channel: MessageableChannel, emoji: str
) -> discord.HTTPException | None:
    """One reaction (each is a rate-limited request). A missing permission or an emoji the server deleted is
    logged once per channel; returns what Discord said when it failed."""
    try:
        await message.add_reaction(emoji)
    except discord.HTTPException as e:
        app.notices.once(
            ("reaction", channel.id),
            "could not react with %s in channel %s (the bot needs Add Reactions and Read Message History there; "
            "a custom emoji must still exist): %s",
            emoji,
            channel.id,
            e,
        )
        return e
    log.info("reacted to message %s with %s", message.id, emoji)
    return None


async def apply_tags(app: App, thread: discord.Thread, answers: list[ImageAnswer]) -> None:
    """Add the forum's tags named like the best labels to a new post, keeping the author's."""
    forum = forum_of(thread)
    if forum is None:
        return
    wanted = matching_tags(best_labels(answers), forum.available_tags)
    if not wanted:
        log.info("post %s: no tag of channel %s matches %s", thread.id, forum.id, summary_line(answers))
        return
    me = thread.guild.me
    if me is None or not forum.permissions_for(me).manage_threads:
        log.info("post %s not tagged: no Manage Threads in channel %s", thread.id, forum.id)
        app.notices.once(
            ("manage_threads", forum.id),
            "cannot tag posts in channel %s (%s): the bot needs the Manage Threads permission there",
            forum.id,
            forum.name,
        )
        return
    new = tags_to_apply(thread.applied_tags, wanted, may_moderate=True)
    if new is None:
        return
    try:
        await thread.edit(applied_tags=new)
    except discord.HTTPException as e:
        app.notices.once(("tags", forum.id), "could not tag post %s in channel %s: %s", thread.id, forum.id, e)
        return
    log.info("tagged post %s: %s", thread.id, "、".join(tag.name for tag in new))


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
