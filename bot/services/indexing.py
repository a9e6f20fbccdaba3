"""The image index as the bot uses it: where indexing and repost replies are on, what to store for a
classified image, and searches that only return what the asking member may see.

The switches follow the label sets' chain: thread → parent channel → server → config (`index.default`
for indexing; repost replies are off unless a moderator turned them on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from bot.services.classifying import ImageAnswer
from bot.services.visibility import Visibility
from bot.store import StorageError
from bot.store.images import ImageIndex, IndexedImage, SearchHit
from bot.transport import WorkerTransport
from wakeru.config import Config
from wakeru.protocol import model_key

log = logging.getLogger("wakeru.index")

_FETCH_FACTOR = 4  # a search asks the store for this many times more rows than it needs, then filters
_MAX_FETCH = 2000  # …growing up to this many when members may not see most of them


@dataclass(frozen=True, slots=True)
class Switches:
    indexing: bool
    reposts: bool


@dataclass(frozen=True, slots=True)
class Post:
    """Where an image was posted: what the index stores besides the embedding and the labels."""

    guild_id: int
    channel_id: int
    parent_id: int | None
    message_id: int
    author_id: int
    posted_at: float


GONE_TTL_S = 900.0  # how long a deletion is remembered for images still being classified (a backfill's chunk)


class Indexer:
    def __init__(self, config: Config, index: ImageIndex, transport: WorkerTransport):
        self.config = config
        self.index = index
        self.transport = transport
        # Messages and channels Discord deleted lately: an image classified meanwhile (it was read before the
        # delete arrived) is removed again right after it is stored. Ids only, kept GONE_TTL_S.
        self._gone: dict[int, float] = {}

    def forget_later(self, ids: Iterable[int]) -> None:
        """Remember deleted message, channel or thread ids for a while (see record)."""
        now = time.monotonic()
        for key in [k for k, at in self._gone.items() if now - at > GONE_TTL_S]:
            del self._gone[key]
        for one in ids:
            self._gone[one] = now

    def _deleted(self, post: Post) -> bool:
        return any(one in self._gone for one in (post.message_id, post.channel_id, post.parent_id) if one)

    def model(self) -> str:
        """The model key new embeddings are made with: the worker's, else the configured one."""
        info = self.transport.info
        return info.model_key if info is not None else model_key(self.config.model.id, self.config.model.revision)

    async def switches(self, guild_id: int, channel_id: int, parent_id: int | None) -> Switches:
        indexing: bool | None = None
        reposts: bool | None = None
        scopes: list[int | None] = [channel_id] + ([parent_id] if parent_id is not None else []) + [None]
        for scope in scopes:
            own = await self.index.get_settings(guild_id, scope)
            indexing = own.enabled if indexing is None else indexing
            reposts = own.reposts if reposts is None else reposts
        if indexing is None:
            indexing = self.config.index.default == "on"
        return Switches(bool(indexing), bool(reposts))

    async def record(self, post: Post, attachment_id: int, answer: ImageAnswer, *, replace: bool = False) -> bool:
        """Store one classified image; False when it carries no embedding or was already stored
        (replace=True overwrites: re-embedding with the current model)."""
        result = answer.result
        if not result.ok or result.embedding is None:
            return False
        image = IndexedImage(
            guild_id=post.guild_id,
            channel_id=post.channel_id,
            parent_id=post.parent_id,
            message_id=post.message_id,
            attachment_id=attachment_id,
            author_id=post.author_id,
            posted_at=post.posted_at,
            filename=answer.filename[:200],
            labels=tuple(score.label for score in result.top),
            model=result.embedding_model or self.model(),
            embedding=result.embedding,
        )
        stored = await self.index.add(image, replace=replace)
        if self._deleted(post):  # deleted while it was being classified: the delete event found nothing yet
            await self.index.delete_messages([post.message_id])
            return False
        return stored

    async def earlier_copy(
        self,
        post: Post,
        attachment_id: int,
        answer: ImageAnswer,
        channel_ids: Collection[int],
        allowed: Callable[[SearchHit], Awaitable[bool]] | None = None,
    ) -> SearchHit | None:
        """The most similar earlier image of this server (in `channel_ids`) when it is a near-duplicate,
        else None. `allowed` vets each candidate further (a public reply must not point into a private thread).

        A moderator's "not a repost" on a pair (A, E) says those look-alikes are different pictures: E is
        then never cited for an image that is also a near-duplicate of A (nor A for one close to E)."""
        result = answer.result
        if not result.ok or result.embedding is None:
            return None
        hits = await self.index.search(
            post.guild_id,
            result.embedding,
            result.embedding_model or self.model(),
            limit=10,
            channel_ids=channel_ids,
            exclude_message_id=post.message_id,
            before=post.posted_at,
        )
        close = [
            hit
            for hit in hits
            if hit.score >= self.config.index.repost_threshold and (allowed is None or await allowed(hit))
        ]
        if not close:
            return None
        near = [hit.image.attachment_id for hit in close]
        cleared: set[int] = set()
        for one in (attachment_id, *near):
            cleared |= await self.index.not_reposts(post.guild_id, one, [a for a in near if a != one])
        return next((hit for hit in close if hit.image.attachment_id not in cleared), None)

    async def search(
        self,
        visibility: Visibility,
        embedding: bytes,
        model: str,
        *,
        channel_id: int | None = None,
        channel_parent_id: int | None = None,
        author_id: int | None = None,
        exclude_message_id: int | None = None,
    ) -> list[SearchHit]:
        """The best `index.results` images the member may see, best first. `channel_id` narrows the search
        to one channel (and its threads) and must itself be readable."""
        wanted = self.config.index.results
        guild_id = visibility.guild.id
        channel_ids: Collection[int] = visibility.readable
        if channel_id is not None:  # that channel and its threads, if the member may read it
            if not await visibility.sees(channel_id, channel_parent_id or _parent_of(visibility, channel_id)):
                return []
            channel_ids = {channel_id}
        if not channel_ids:
            return []
        fetch = wanted * _FETCH_FACTOR
        while True:
            hits = await self.index.search(
                guild_id,
                embedding,
                model,
                limit=fetch,
                channel_ids=channel_ids,
                author_id=author_id,
                exclude_message_id=exclude_message_id,
            )
            shown: list[SearchHit] = []
            for hit in hits:
                if hit.score < self.config.index.min_score:
                    break
                seen = await visibility.sees(hit.image.channel_id, hit.image.parent_id)
                if seen is None:  # the thread is gone: its rows go too (housekeeping: never fails the search)
                    try:
                        await self.index.delete_channel(hit.image.channel_id)
                    except StorageError as e:
                        log.info("rows of gone thread %s not removed: %s", hit.image.channel_id, e)
                elif seen:
                    shown.append(hit)
                    if len(shown) == wanted:
                        return shown
            if len(hits) < fetch or fetch >= _MAX_FETCH:
                return shown
            fetch = min(fetch * _FETCH_FACTOR, _MAX_FETCH)

    async def expire(self) -> int:
        """index.retention_days: drop rows posted before the cut-off (0 = keep)."""
        days = self.config.index.retention_days
        if days <= 0:
            return 0
        removed = await self.index.expire(time.time() - days * 86400)
        if removed:
            log.info("retention: removed %d indexed image(s) older than %d days", removed, days)
        return removed


def _parent_of(visibility: Visibility, channel_id: int) -> int | None:
    thread = visibility.guild.get_thread(channel_id)
    return thread.parent_id if thread is not None else None
