"""Who may see which indexed image: the channels and threads a member can read right now.

A result is shown only from a channel the member can View and Read Message History in (discord.py
computes that from the cached roles and the channel's role and member overwrites), and from a thread
only if they can read its parent; a private thread also needs them to be in it (or to Manage Threads
there). Never from another server: every query is already filtered by guild.
"""

from __future__ import annotations

import logging

import discord

log = logging.getLogger("wakeru.index")


def can_read(channel: discord.abc.GuildChannel, who: discord.Member | discord.Role) -> bool:
    perms = channel.permissions_for(who)
    return perms.view_channel and perms.read_message_history


def readable_by(guild: discord.Guild, who: discord.Member | discord.Role) -> set[int]:
    """The channels (not threads, not categories) `who` may read."""
    return {c.id for c in guild.channels if not isinstance(c, discord.CategoryChannel) and can_read(c, who)}


async def find_thread(guild: discord.Guild, thread_id: int) -> discord.Thread | bool:
    """The thread (from the cache, else Discord: archived threads are not cached); False when the bot cannot
    look it up, True when it is gone (deleted)."""
    thread = guild.get_thread(thread_id)
    if thread is not None:
        return thread
    try:
        fetched = await guild.fetch_channel(thread_id)
    except discord.NotFound:
        return True
    except discord.HTTPException as e:  # Forbidden included: the bot cannot vouch for it
        log.info("thread %s could not be looked up: %s", thread_id, e)
        return False
    return fetched if isinstance(fetched, discord.Thread) else False


async def is_public_thread(guild: discord.Guild, thread_id: int) -> bool:
    """A thread everyone who can read its parent can read (not private, and still there)."""
    thread = await find_thread(guild, thread_id)
    return isinstance(thread, discord.Thread) and not thread.is_private()


class Visibility:
    """One member's view of one server, for one search: thread lookups are cached for its duration.

    public=True: the answer will be shown in the channel, so it may only hold what everyone in the server may
    read as well (channels @everyone can read, public threads), whatever more the asking member may see."""

    def __init__(self, guild: discord.Guild, member: discord.Member, *, public: bool = False):
        self.guild = guild
        self.member = member
        self.public = public
        self.readable = readable_by(guild, member)
        if public:
            self.readable &= readable_by(guild, guild.default_role)
        self._threads: dict[int, bool | None] = {}

    async def sees(self, channel_id: int, parent_id: int | None) -> bool | None:
        """Whether the member may see images of this channel or thread; None when the thread is gone."""
        if parent_id is None:
            return channel_id in self.readable
        if parent_id not in self.readable:
            return False
        if channel_id not in self._threads:
            self._threads[channel_id] = await self._sees_thread(channel_id, parent_id)
        return self._threads[channel_id]

    async def _sees_thread(self, thread_id: int, parent_id: int) -> bool | None:
        thread = await find_thread(self.guild, thread_id)
        if thread is True:
            return None  # gone: its rows go too
        if thread is False:
            return False
        if not thread.is_private():
            return True
        if self.public:  # a private thread never shows in an answer others see
            return False
        parent = self.guild.get_channel(parent_id)
        if parent is not None and parent.permissions_for(self.member).manage_threads:
            return True
        try:
            await thread.fetch_member(self.member.id)
        except discord.NotFound:
            return False
        except discord.HTTPException as e:
            log.info("membership of thread %s could not be checked: %s", thread_id, e)
            return False
        return True
