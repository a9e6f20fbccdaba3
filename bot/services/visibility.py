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


def can_read(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member) -> bool:
    perms = channel.permissions_for(member)
    return perms.view_channel and perms.read_message_history


class Visibility:
    """One member's view of one server, for one search: thread lookups are cached for its duration."""

    def __init__(self, guild: discord.Guild, member: discord.Member):
        self.guild = guild
        self.member = member
        self.readable = {
            c.id for c in guild.channels if not isinstance(c, discord.CategoryChannel) and can_read(c, member)
        }
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
        thread = self.guild.get_thread(thread_id)
        if thread is None:  # archived threads are not in the cache
            try:
                fetched = await self.guild.fetch_channel(thread_id)
            except discord.NotFound:
                return None
            except discord.HTTPException as e:  # Forbidden included: the bot cannot vouch for it
                log.info("thread %s could not be looked up: %s", thread_id, e)
                return False
            if not isinstance(fetched, discord.Thread):
                return False
            thread = fetched
        if not thread.is_private():
            return True
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
