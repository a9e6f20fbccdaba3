"""Deletions that happened while the bot was offline: the gateway never sends a CHANNEL_DELETE or GUILD_DELETE
for them, so after each READY the index and the corrections are compared with the guilds and channels Discord
says exist, and what belongs to a gone guild or channel is removed.

Only guilds this process is responsible for are judged (its shards: other bot processes sharing a PostgreSQL
database own the others), and a guild that is unavailable (an outage) is left alone: its channels are unknown.
Threads are not judged here: archived threads are not in the gateway's cache, so their absence proves nothing;
their rows are under their parent, and a search that meets a deleted thread removes it then.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.store import LabelStore, StorageError
from bot.store.images import ImageIndex

log = logging.getLogger("wakeru.index")


@dataclass(frozen=True, slots=True)
class Reconciled:
    guilds: int = 0  # gone guilds whose data was removed
    channels: int = 0  # gone channels whose data was removed
    rows: int = 0  # index rows removed
    corrections: int = 0  # corrections removed


async def reconcile(
    index: ImageIndex,
    store: LabelStore,
    present: Mapping[int, frozenset[int] | None],
    owns: Callable[[int], bool],
) -> Reconciled:
    """present: the guilds the bot is in, each with its channels' ids (None: unavailable, not judged).
    owns(guild_id): whether this process's shards hold that guild. Errors of one store are logged and the
    other store is still checked; nothing is raised."""
    gone_guilds: set[int] = set()
    gone_channels: set[tuple[int, int]] = set()

    async def sweep(
        name: str,
        places: Callable[[], Awaitable[dict[int, set[int]]]],
        drop_guild: Callable[[int], Awaitable[int]],
        drop_channel: Callable[[int, int], Awaitable[int]],
    ) -> int:
        removed = 0
        try:
            for guild_id, used in (await places()).items():
                if not owns(guild_id):
                    continue
                if guild_id not in present:
                    removed += await drop_guild(guild_id)
                    gone_guilds.add(guild_id)
                    continue
                existing = present[guild_id]
                for channel_id in sorted(used - existing) if existing is not None else ():
                    removed += await drop_channel(guild_id, channel_id)
                    gone_channels.add((guild_id, channel_id))
        except StorageError as e:
            log.warning("start-up check of the %s: %s", name, e)
        return removed

    async def index_channel(guild_id: int, channel_id: int) -> int:
        return await index.delete_channel(channel_id)

    async def corrections_guild(guild_id: int) -> int:
        return await store.forget_corrections(guild_id)

    async def corrections_channel(guild_id: int, channel_id: int) -> int:
        return await store.forget_corrections(guild_id, channel_id=channel_id)

    rows = await sweep("index", index.places, index.delete_guild, index_channel)
    corrections = await sweep("corrections", store.correction_places, corrections_guild, corrections_channel)
    return Reconciled(guilds=len(gone_guilds), channels=len(gone_channels), rows=rows, corrections=corrections)


def shard_owner(shard_count: int | None, shard_ids: list[int] | None) -> Callable[[int], bool]:
    """Whether a guild is on this process's shards (Discord's rule: (guild_id >> 22) % shard_count)."""
    if not shard_count or shard_count <= 1:
        return lambda guild_id: True
    mine = set(range(shard_count)) if shard_ids is None else set(shard_ids)
    return lambda guild_id: (guild_id >> 22) % shard_count in mine
