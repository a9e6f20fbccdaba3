"""The image index when its database cannot hold one (a PostgreSQL without pgvector, a SQLite that cannot
load sqlite-vec): the bot still runs, and its label features work.

Live paths see an empty, switched-off index (no post is indexed, deletes have nothing to remove); what a
member asks of the index itself (/search, /index …, /labels stats) is refused with a StorageError, so they
are told it is unavailable. The operator got the reason in the log when the bot started.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from bot.store.base import StorageError
from bot.store.images.base import BackfillJob, ImageIndex, IndexCounts, IndexedImage, IndexSettings, SearchHit


class UnavailableIndex(ImageIndex):
    def __init__(self, reason: str):
        self.reason = reason

    def _refuse(self) -> StorageError:
        return StorageError(f"the image index is unavailable: {self.reason}", reason="broken")

    async def close(self) -> None:
        return None

    # what members ask of the index: refused, so they are told
    async def add(self, image: IndexedImage, *, replace: bool = False) -> bool:
        raise self._refuse()

    async def get(self, guild_id: int, message_id: int) -> list[IndexedImage]:
        raise self._refuse()

    async def search(
        self,
        guild_id: int,
        embedding: bytes,
        model: str,
        *,
        limit: int,
        channel_ids: Collection[int] | None = None,
        author_id: int | None = None,
        exclude_message_id: int | None = None,
        before: float | None = None,
    ) -> list[SearchHit]:
        raise self._refuse()

    async def delete_author(self, guild_id: int, author_id: int) -> int:
        raise self._refuse()

    async def counts(self, guild_id: int, model: str) -> IndexCounts:
        raise self._refuse()

    async def top_label_counts(self, guild_id: int, channel_id: int, since: float) -> dict[str, int]:
        raise self._refuse()

    async def stale(self, guild_id: int, channel_id: int, model: str, *, limit: int) -> list[IndexedImage]:
        raise self._refuse()

    async def set_enabled(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        raise self._refuse()

    async def set_reposts(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        raise self._refuse()

    async def mark_not_repost(self, guild_id: int, attachment_a: int, attachment_b: int, *, user_id: int) -> None:
        raise self._refuse()

    async def not_reposts(self, guild_id: int, attachment_id: int, candidates: Sequence[int]) -> set[int]:
        raise self._refuse()

    async def start_backfill(self, job: BackfillJob, *, stale_after: float) -> BackfillJob | None:
        raise self._refuse()

    async def update_backfill(self, job: BackfillJob) -> None:
        raise self._refuse()

    async def get_backfill(self, channel_id: int) -> BackfillJob | None:
        raise self._refuse()

    # the live paths: an empty index that is switched off everywhere
    async def get_settings(self, guild_id: int, channel_id: int | None) -> IndexSettings:
        return IndexSettings()

    async def delete_messages(self, message_ids: Collection[int]) -> int:
        return 0

    async def keep_attachments(self, message_id: int, attachment_ids: Collection[int]) -> int:
        return 0

    async def delete_channel(self, channel_id: int) -> int:
        return 0

    async def delete_guild(self, guild_id: int) -> int:
        return 0

    async def expire(self, before: float) -> int:
        return 0

    async def places(self) -> dict[int, set[int]]:
        return {}

    async def running_backfills(self, guild_ids: Collection[int]) -> list[BackfillJob]:
        return []
