"""The image index, the part every backend shares: records, the ImageIndex interface, and its rules.

What is stored per image (and nothing else; never the image bytes): guild, channel (and the thread's parent),
message, attachment and author ids, when it was posted, the file name, the top labels of its classification, and
the embedding with the model key (id@revision) that made it. Plus the per-scope switches (indexing on/off, repost
replies on/off), the pairs a moderator marked "not a repost", and the backfill jobs with their progress.

Embeddings are float32 little-endian bytes, L2-normalised (wakeru.protocol.pack_embedding); similarity is cosine.
Embeddings of different models are never compared: every query names the model key, and rows of another model are
"stale" until re-embedded.

Scopes follow the label store's convention: channel_id None = the server-wide setting (stored as 0).

Pure stdlib: this module must not import torch, PIL, numpy or discord.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Self

__all__ = [
    "BackfillJob",
    "ImageIndex",
    "IndexCounts",
    "IndexSettings",
    "IndexedImage",
    "SearchHit",
]


@dataclass(frozen=True, slots=True)
class IndexedImage:
    guild_id: int
    channel_id: int  # the channel or thread the message is in
    parent_id: int | None  # the thread's parent channel; None when channel_id is not a thread
    message_id: int
    attachment_id: int  # unique across Discord: the row's key
    author_id: int
    posted_at: float  # unix seconds: when the message was posted
    filename: str
    labels: tuple[str, ...]  # the top labels of its classification, best first; () when indexed without labels
    model: str  # the model key (wakeru.protocol.model_key) that made the embedding
    embedding: bytes = b""  # float32 LE, normalised; b"" in rows read back without their vector


@dataclass(frozen=True, slots=True)
class SearchHit:
    image: IndexedImage  # read back without its embedding
    score: float  # cosine similarity with the query, in [-1, 1]; best first


@dataclass(frozen=True, slots=True)
class IndexCounts:
    total: int  # rows of this guild (every model)
    current: int  # rows made by the model asked about
    stale: int  # rows made by another model (total - current)


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """A scope's own switches; None = not set here (fall back: thread → parent channel → server → config)."""

    enabled: bool | None = None
    reposts: bool | None = None


BackfillStatus = Literal["running", "done", "failed", "cancelled"]


@dataclass(frozen=True, slots=True)
class BackfillJob:
    guild_id: int
    channel_id: int
    requested_by: int | None
    since: float  # unix seconds: index messages posted after this
    cursor: int | None  # the oldest message id already handled (history is read newest first); None = not started
    done: int  # images indexed so far
    total: int | None  # images found so far to index (grows while the history is read); None = not counted yet
    status: BackfillStatus
    started_at: float
    updated_at: float
    owner: str  # which bot process runs it (host:pid); another process may take it over when updated_at is old
    message: str | None = None  # "channel_id/message_id" of the progress message, to edit it after a restart
    reembed: bool = False  # re-embed this channel's stale rows from their stored message references


class ImageIndex(abc.ABC):
    """Open one with `bot.store.images.open_index(storage.url)`; close with `await index.close()`.

    Every method is a coroutine that never blocks the event loop. Errors an operator can fix are
    bot.store.StorageError (same `reason` values as the label store)."""

    # ------------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection(s); safe to call more than once."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ images

    @abc.abstractmethod
    async def add(self, image: IndexedImage, *, replace: bool = False) -> bool:
        """Store one image. The attachment id is the key: a second add of the same attachment (another bot
        process, a retried event) stores nothing and returns False, unless replace=True (re-embedding with a new
        model or new labels), which overwrites the row and returns True."""

    @abc.abstractmethod
    async def get(self, guild_id: int, message_id: int) -> list[IndexedImage]:
        """The indexed images of one message, in attachment order, with their embeddings."""

    @abc.abstractmethod
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
        """The `limit` rows of this guild most similar to `embedding` (cosine, best first), made by `model` only.

        channel_ids: only rows whose channel_id or parent_id is in it (the channels the member may read, or the
        /search channel option). author_id: only that author's images. exclude_message_id: not that message's
        images (find-similar). before: only images posted before this time (repost detection)."""

    # ------------------------------------------------------------------ deletion (follows Discord)

    @abc.abstractmethod
    async def delete_messages(self, message_ids: Collection[int]) -> int:
        """MESSAGE_DELETE / MESSAGE_DELETE_BULK: remove these messages' rows; returns how many rows went."""

    @abc.abstractmethod
    async def keep_attachments(self, message_id: int, attachment_ids: Collection[int]) -> int:
        """MESSAGE_UPDATE: the message now has only these attachments; remove its other rows."""

    @abc.abstractmethod
    async def delete_channel(self, channel_id: int) -> int:
        """CHANNEL_DELETE / THREAD_DELETE: rows in that channel or thread, and in threads whose parent it was;
        also its settings and backfill job."""

    @abc.abstractmethod
    async def delete_guild(self, guild_id: int) -> int:
        """GUILD_DELETE (the bot left or was removed): everything of that guild, settings and jobs included."""

    @abc.abstractmethod
    async def delete_author(self, guild_id: int, author_id: int) -> int:
        """/index forget: that member's images in that guild."""

    @abc.abstractmethod
    async def expire(self, before: float) -> int:
        """index.retention_days: rows posted before this time, in every guild."""

    @abc.abstractmethod
    async def places(self) -> dict[int, set[int]]:
        """Every guild the index holds anything of, with the top-level channels its rows and switches name (a
        thread's rows count under its parent): what a start-up check compares with the guilds and channels that
        still exist, for deletions that happened while the bot was offline."""

    # ------------------------------------------------------------------ counts, statistics, re-embedding

    @abc.abstractmethod
    async def counts(self, guild_id: int, model: str) -> IndexCounts:
        """How many rows the guild has, and how many of them `model` made."""

    @abc.abstractmethod
    async def top_label_counts(self, guild_id: int, channel_id: int, since: float) -> dict[str, int]:
        """How often each label came first among the images posted since `since` in this channel and its threads."""

    @abc.abstractmethod
    async def stale(self, guild_id: int, channel_id: int, model: str, *, limit: int) -> list[IndexedImage]:
        """Rows of this channel (and its threads) made by another model than `model`, oldest first, without
        embeddings: what a re-embedding backfill fetches again."""

    # ------------------------------------------------------------------ settings and repost decisions

    @abc.abstractmethod
    async def get_settings(self, guild_id: int, channel_id: int | None) -> IndexSettings:
        """The scope's own switches (channel_id None = server-wide)."""

    @abc.abstractmethod
    async def set_enabled(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        """Indexing on/off for the scope (None clears the scope's own switch)."""

    @abc.abstractmethod
    async def set_reposts(
        self, guild_id: int, channel_id: int | None, enabled: bool | None, *, user_id: int | None
    ) -> None:
        """Repost replies on/off for the scope (None clears it)."""

    @abc.abstractmethod
    async def mark_not_repost(self, guild_id: int, attachment_a: int, attachment_b: int, *, user_id: int) -> None:
        """A moderator said these two images are not a repost of each other (order does not matter)."""

    @abc.abstractmethod
    async def not_reposts(self, guild_id: int, attachment_id: int, candidates: Sequence[int]) -> set[int]:
        """Which of `candidates` were marked "not a repost" together with `attachment_id`."""

    # ------------------------------------------------------------------ backfill jobs

    @abc.abstractmethod
    async def start_backfill(self, job: BackfillJob, *, stale_after: float) -> BackfillJob | None:
        """Record a new running job for its channel; None if that channel already has a running job whose
        updated_at is newer than `stale_after` (unix seconds). An older running job (its process died) is
        replaced. Atomic across processes: two callers never both get a job."""

    @abc.abstractmethod
    async def update_backfill(self, job: BackfillJob) -> None:
        """Save progress (cursor, done, total, status, updated_at, message) of the job's channel."""

    @abc.abstractmethod
    async def get_backfill(self, channel_id: int) -> BackfillJob | None:
        """The channel's latest job (running or finished); None if it never had one."""

    @abc.abstractmethod
    async def running_backfills(self, guild_ids: Collection[int]) -> list[BackfillJob]:
        """Jobs still marked running in these guilds (to resume after a restart)."""


# ------------------------------------------------------------------ shared by the backends (added with them)

SERVER_SCOPE = 0  # channel_id stored for the server-wide settings (channel_id None), as in the label store
MAX_EMBEDDING_DIM = 8192  # more than any CLIP-family model's embedding; a bigger one is a caller's bug


def embedding_dim(embedding: bytes) -> int:
    """The number of float32 values in a packed embedding; ValueError when it is not a usable embedding."""
    if not embedding or len(embedding) % 4 or len(embedding) // 4 > MAX_EMBEDDING_DIM:
        raise ValueError(
            f"an embedding is 1 to {MAX_EMBEDDING_DIM} float32 values (wakeru.protocol.pack_embedding); "
            f"got {len(embedding)} bytes"
        )
    return len(embedding) // 4


def scope_id(channel_id: int | None) -> int:
    return SERVER_SCOPE if channel_id is None else channel_id


# places(): a thread's rows under their parent; a channel's switch (channel scopes are always top-level); the guild
# alone for server-wide switches, "not a repost" pairs and backfill jobs (a job may name a thread, which an archived
# thread's absence from the cache must not make look deleted).
PLACES_SQL = (
    "SELECT guild_id, COALESCE(parent_id, channel_id) FROM indexed_images "
    "UNION SELECT guild_id, channel_id FROM index_settings "
    "UNION SELECT guild_id, 0 FROM not_reposts "
    "UNION SELECT guild_id, 0 FROM backfill_jobs"
)


def labels_json(labels: Sequence[str]) -> str:
    import json

    return json.dumps(list(labels), ensure_ascii=False)


def labels_from_json(text: str | None) -> tuple[str, ...]:
    import json

    if not text:
        return ()
    value = json.loads(text)
    return tuple(str(label) for label in value) if isinstance(value, list) else ()


def pair(attachment_a: int, attachment_b: int) -> tuple[int, int]:
    """A not-repost pair in its stored order (smaller id first), so (a, b) and (b, a) are one row."""
    return (attachment_a, attachment_b) if attachment_a <= attachment_b else (attachment_b, attachment_a)


def optional_bool(value: object) -> bool | None:
    return None if value is None else bool(value)
