"""Search results as embeds: a thumbnail, the channel, the author, the date and a jump link per image.

Attachment URLs are signed and expire, so each result's message is fetched again for a fresh URL (at
most `index.results` small REST calls, side by side; discord.py keeps to the rate limits). A message
that is gone (404) takes its rows out of the index on the way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import discord

from bot.face.render import escape
from bot.face.texts import LocaleLike, text
from bot.store import StorageError
from bot.store.images import ImageIndex, SearchHit

log = logging.getLogger("wakeru.search")


def messageable(guild: discord.Guild, channel_id: int) -> discord.abc.Messageable:
    """A channel or thread of the guild to read messages from: the cached one, else a partial one (an uncached
    thread, say), which REST calls work with all the same."""
    channel = guild.get_channel_or_thread(channel_id)
    if isinstance(channel, discord.abc.Messageable):
        return channel
    return discord.PartialMessageable(state=guild._state, id=channel_id, guild_id=guild.id)


def jump_url(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


async def with_fresh_urls(
    guild: discord.Guild, index: ImageIndex, hits: list[SearchHit]
) -> list[tuple[SearchHit, str | None]]:
    """Each hit with a fresh thumbnail URL (None when the bot cannot read the message any more);
    hits whose message or attachment is gone are dropped and deleted from the index."""

    async def fresh(hit: SearchHit) -> tuple[SearchHit, str | None] | None:
        image = hit.image
        try:
            message = await messageable(guild, image.channel_id).fetch_message(image.message_id)
        except discord.NotFound:
            await _tidy(index.delete_messages([image.message_id]), image.message_id)
            return None
        except discord.HTTPException as e:
            log.info("no fresh URL for message %s: %s", image.message_id, e)
            return hit, None
        attachment = next((a for a in message.attachments if a.id == image.attachment_id), None)
        if attachment is None:  # removed by an edit
            await _tidy(index.keep_attachments(message.id, [a.id for a in message.attachments]), message.id)
            return None
        return hit, attachment.proxy_url or attachment.url

    found = await asyncio.gather(*(fresh(hit) for hit in hits))
    return [item for item in found if item is not None]


async def _tidy(removal: Awaitable[int], message_id: int) -> None:
    """Removing a gone message's rows is housekeeping: a read-only or busy index must not fail the search."""
    try:
        await removal
    except StorageError as e:
        log.info("rows of gone message %s not removed: %s", message_id, e)


def result_embeds(locale: LocaleLike, results: list[tuple[SearchHit, str | None]]) -> list[discord.Embed]:
    embeds = []
    for rank, (hit, thumbnail) in enumerate(results, 1):
        image = hit.image
        lines = [
            text(
                locale,
                "search.where",
                channel=f"<#{image.channel_id}>",
                author=f"<@{image.author_id}>",
                date=f"<t:{int(image.posted_at)}:f>",
            ),
            text(locale, "search.score", score=f"{hit.score:.3f}"),
        ]
        if image.labels:
            lines.append(text(locale, "search.labels", label=escape(image.labels[0], 60)))
        embed = discord.Embed(
            title=f"{rank}. {escape(image.filename, 200)}"[:256],
            url=jump_url(image.guild_id, image.channel_id, image.message_id),
            description="\n".join(lines),
        )
        if thumbnail:
            embed.set_thumbnail(url=thumbnail)
        embeds.append(embed)
    return embeds
