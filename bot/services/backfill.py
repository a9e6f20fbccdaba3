"""/index backfill: index a channel's existing images through the history API, with a progress message.

One job per channel at a time, across bot processes (the job row in the index is the lock); its progress
(the oldest message handled, how many images are done) is saved every few seconds, so a restarted bot
resumes where it stopped. Reading history goes through discord.py, which follows Discord's rate-limit
headers; images are classified a few at a time (CONCURRENCY), and a busy worker makes the job wait, not
fail. Rows made by another model (stale after a model change) are re-embedded first, from their stored
message references.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import discord

from bot.services.classifying import Classifier
from bot.services.indexing import Indexer, Post
from bot.store.images import BackfillJob, ImageIndex, IndexedImage
from wakeru.config import Config
from wakeru.protocol import ErrorCode

log = logging.getLogger("wakeru.backfill")

CONCURRENCY = 8  # images in flight per job: a live post waits behind at most this many (one batch)
PROGRESS_EVERY_S = 5.0  # progress message edits and saved progress
STALE_AFTER_S = 120.0  # a running job not updated for this long belongs to a process that died
_BUSY_RETRY_S = 2.0
_BUSY_RETRIES = 30
_RETRY = {ErrorCode.QUEUE_FULL, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.CRASHED}

HistoryChannel = discord.TextChannel | discord.Thread | discord.VoiceChannel | discord.StageChannel
HISTORY_TYPES = (discord.TextChannel, discord.Thread, discord.VoiceChannel, discord.StageChannel)  # for isinstance


@dataclass(frozen=True, slots=True)
class Progress:
    job: BackfillJob
    rate_per_min: float  # images per minute since this run started
    eta_s: float | None  # None until there is a rate to go by
    finished: bool
    skipped: int = 0  # images of this run that could not be indexed (unreadable, or the worker stayed busy)


Reporter = Callable[[Progress], Awaitable[None]]


def process_owner(config: Config) -> str:
    """Who runs a job: the same after a restart of this bot process (so it resumes at once, without
    waiting for the job to go stale), different for a process on another host or with other shards."""
    shards = ",".join(map(str, config.discord.shard_ids)) if config.discord.shard_ids else "all"
    return f"{socket.gethostname()}:shards={shards}"


@dataclass(eq=False)
class _Item:
    message: discord.Message
    attachment: discord.Attachment
    replace: bool  # re-embedding a stale row
    row: IndexedImage | None = None  # that row: where it was posted (a refetched message's channel may be partial)


class Backfills:
    def __init__(
        self,
        config: Config,
        index: ImageIndex,
        indexer: Indexer,
        classifier: Classifier,
        is_image: Callable[[discord.Attachment], bool],
    ):
        self.config = config
        self.index = index
        self.indexer = indexer
        self.classifier = classifier
        self.is_image = is_image
        self.owner = process_owner(config)
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def new_job(self, guild_id: int, channel_id: int, user_id: int | None, days: int) -> BackfillJob:
        now = time.time()
        if self.config.index.retention_days:  # never index what retention would delete within the hour
            days = min(days, self.config.index.retention_days)
        return BackfillJob(
            guild_id=guild_id,
            channel_id=channel_id,
            requested_by=user_id,
            since=now - days * 86400,
            cursor=None,
            done=0,
            total=None,
            status="running",
            started_at=now,
            updated_at=now,
            owner=self.owner,
            reembed=True,
        )

    async def claim(self, job: BackfillJob) -> BackfillJob | None:
        """Record the job as running here; None if another live one holds the channel."""
        if job.channel_id in self.tasks and not self.tasks[job.channel_id].done():
            return None
        return await self.index.start_backfill(job, stale_after=time.time() - STALE_AFTER_S)

    def launch(
        self, job: BackfillJob, channel: HistoryChannel, labels: tuple[str, ...], report: Reporter
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(job, channel, labels, report), name=f"backfill-{job.channel_id}")
        self.tasks[job.channel_id] = task
        task.add_done_callback(
            lambda t: self.tasks.pop(job.channel_id, None) if self.tasks.get(job.channel_id) is t else None
        )
        return task

    def cancel(self, channel_id: int) -> None:
        """Stop the channel's job (its channel was deleted: nothing is left to index or to report to)."""
        task = self.tasks.get(channel_id)
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        """Stop the jobs of this process; they stay "running" in the index and resume at the next start."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- the job ---------------------------------------------------------------------------

    async def _run(self, job: BackfillJob, channel: HistoryChannel, labels: tuple[str, ...], report: Reporter) -> None:
        started, done_at_start = time.monotonic(), job.done
        skipped = 0
        last_report = 0.0

        async def tick(force: bool = False, finished: bool = False) -> None:
            nonlocal job, last_report
            now = time.monotonic()
            if not force and now - last_report < PROGRESS_EVERY_S:
                return
            last_report = now
            job = replace(job, updated_at=time.time())
            await self.index.update_backfill(job)
            minutes = max(now - started, 1e-6) / 60
            rate = (job.done - done_at_start) / minutes
            left = None if job.total is None else max(job.total - job.done, 0)
            eta = None if left is None or rate <= 0 else left / rate * 60
            try:
                await report(Progress(job, rate, 0.0 if finished else eta, finished, skipped))
            except discord.HTTPException as e:  # a deleted progress message must not stop the job
                log.info("backfill progress of channel %s not shown: %s", job.channel_id, e)

        try:
            # reading a long history takes a while: keep the job visibly alive meanwhile, so no other
            # process takes it for a dead one
            heartbeat = asyncio.create_task(self._heartbeat(job), name=f"backfill-{job.channel_id}-heartbeat")
            try:
                items = await self._collect(job, channel)
            finally:
                heartbeat.cancel()
            job = replace(job, total=job.done + len(items))
            await tick(force=True)
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def one(item: _Item) -> None:
                nonlocal skipped
                async with semaphore:
                    if not await self._index_one(job, item, labels):
                        skipped += 1

            # newest first, in chunks: once a chunk is done, every message newer than its oldest is handled
            for start in range(0, len(items), CONCURRENCY * 4):
                chunk = items[start : start + CONCURRENCY * 4]
                await asyncio.gather(*(one(item) for item in chunk))
                history = [item.message.id for item in chunk if not item.replace]
                job = replace(job, done=job.done + len(chunk), cursor=min(history) if history else job.cursor)
                await tick()
            job = replace(job, status="done")
            await tick(force=True, finished=True)
            log.info("backfill of channel %s done: %d image(s)", job.channel_id, job.done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # shutting down: keep what was done for the next start
                # updated_at 0: paused, not abandoned; the next process resumes it at once, whoever it is
                await asyncio.shield(self.index.update_backfill(replace(job, updated_at=0.0)))
            log.info(
                "backfill of channel %s paused at %d image(s); it resumes at the next start", job.channel_id, job.done
            )
            raise
        except discord.Forbidden as e:
            log.warning("backfill of channel %s stopped: missing access (%s)", job.channel_id, e)
            job = replace(job, status="failed")
            await tick(force=True, finished=True)
        except Exception:
            log.exception("backfill of channel %s failed", job.channel_id)
            job = replace(job, status="failed")
            await tick(force=True, finished=True)

    async def _heartbeat(self, job: BackfillJob) -> None:
        while True:
            await asyncio.sleep(STALE_AFTER_S / 4)
            try:
                await self.index.update_backfill(replace(job, updated_at=time.time()))
            except Exception as e:  # a missed beat is not fatal; the job's own saves go on
                log.info("backfill of channel %s: heartbeat not saved: %s", job.channel_id, e)

    async def _collect(self, job: BackfillJob, channel: HistoryChannel) -> list[_Item]:
        """What is left to do: stale rows of this channel first, then the history not handled yet."""
        items: list[_Item] = []
        model = self.indexer.model()
        if job.reembed:
            stale = await self.index.stale(job.guild_id, job.channel_id, model, limit=100_000)
            items.extend(await self._refetch(channel, stale))
        before = discord.Object(job.cursor) if job.cursor else None
        after = dt.datetime.fromtimestamp(job.since, dt.timezone.utc)
        async for message in channel.history(limit=None, before=before, after=after, oldest_first=False):
            if message.author.bot or message.webhook_id is not None:
                continue
            images = [a for a in message.attachments if self.is_image(a)]
            if not images:
                continue
            known = {row.attachment_id for row in await self.index.get(job.guild_id, message.id) if row.model == model}
            items.extend(_Item(message, a, False) for a in images if a.id not in known)
        return items

    async def _refetch(self, channel: HistoryChannel, rows: list[IndexedImage]) -> list[_Item]:
        """Fresh messages (attachment URLs expire) for stale rows; rows of deleted messages are removed."""
        items: list[_Item] = []
        by_message: dict[int, list[IndexedImage]] = {}
        for row in rows:
            by_message.setdefault(row.message_id, []).append(row)
        for message_id, group in by_message.items():
            try:
                message = await _messageable(channel, group[0].channel_id).fetch_message(message_id)
            except discord.NotFound:
                await self.index.delete_messages([message_id])
                continue
            except discord.HTTPException as e:  # e.g. a thread the bot was removed from: skip, keep going
                log.info("backfill: message %s not re-embedded: %s", message_id, e)
                continue
            wanted = {row.attachment_id for row in group}
            rows_by_id = {row.attachment_id: row for row in group}
            items.extend(_Item(message, a, True, rows_by_id[a.id]) for a in message.attachments if a.id in wanted)
            if wanted - {a.id for a in message.attachments}:  # attachments removed by an edit we missed
                await self.index.keep_attachments(message_id, [a.id for a in message.attachments])
        return items

    async def _index_one(self, job: BackfillJob, item: _Item, labels: tuple[str, ...]) -> bool:
        """Classify, embed and store one image; False when it could not be indexed."""
        message, attachment = item.message, item.attachment
        for _ in range(_BUSY_RETRIES):
            answer = await self.classifier.classify_attachment(attachment, labels, source="backfill", embed=True)
            if answer.result.error not in _RETRY:
                break
            await asyncio.sleep(_BUSY_RETRY_S)  # the worker is busy with live posts: they come first
        if not answer.result.ok or answer.result.embedding is None:
            log.info("backfill: image %s of message %s skipped: %s", attachment.id, message.id, answer.result.error)
            return False
        channel = message.channel
        parent = channel.parent_id if isinstance(channel, discord.Thread) else None
        post = Post(
            guild_id=job.guild_id,
            channel_id=item.row.channel_id if item.row else channel.id,
            parent_id=item.row.parent_id if item.row else parent,
            message_id=message.id,
            author_id=message.author.id,
            posted_at=message.created_at.timestamp(),
        )
        await self.indexer.record(post, attachment.id, answer, replace=item.replace)
        return True


def _messageable(channel: HistoryChannel, channel_id: int) -> discord.abc.Messageable:
    """The channel itself, or one of its threads (cached, else a partial one that can still fetch)."""
    if channel_id == channel.id:
        return channel
    found = channel.guild.get_channel_or_thread(channel_id)
    if isinstance(found, discord.abc.Messageable):
        return found
    # a thread that is neither cached nor the channel itself (archived): a partial one can still fetch
    return discord.PartialMessageable(state=channel._state, id=channel_id, guild_id=channel.guild.id)
