"""The bot's long-lived parts, shared by every handler: config, label store, image index, worker transport,
downloader, and the services built on them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from bot.services import metrics
from bot.services.attachments import AttachmentLike, Downloader, is_image
from bot.services.backfill import Backfills
from bot.services.classifying import Classifier
from bot.services.indexing import Indexer
from bot.services.notices import Notices
from bot.services.ratelimit import RateLimiter
from bot.services.samples import sample_names
from bot.store import LabelStore, StorageError, open_store
from bot.store.images import ImageIndex, open_index
from bot.store.images.unavailable import UnavailableIndex
from bot.transport import WorkerTransport, make_transport
from wakeru.config import Config

log = logging.getLogger("wakeru.app")


class App:
    def __init__(
        self,
        config: Config,
        store: LabelStore,
        transport: WorkerTransport,
        session: aiohttp.ClientSession,
        index: ImageIndex,
    ):
        self.config = config
        self.store = store
        self.transport = transport
        self.session = session
        self.index = index
        self.classifier = Classifier(config, transport, Downloader(config, session))
        self.indexer = Indexer(config, index, transport)
        self.backfills = Backfills(config, index, self.indexer, self.classifier, self.is_image)
        self.samples = sample_names(config.discord.samples_dir, config.images.formats)
        self.limiter = RateLimiter(config.limits)
        self.notices = Notices()  # missing permissions, said once
        self.draining = False  # SIGTERM received: no new work
        self._work: set[asyncio.Task[Any]] = set()  # handlers that are classifying or replying

    @classmethod
    async def open(cls, config: Config, transport: WorkerTransport | None = None) -> App:
        """Open the database first: a bad storage.url should fail before a model is loaded."""
        store = await open_store(config.storage.url)
        try:
            index = await open_index(config.storage.url, memory_bytes=config.index.memory_mb * 2**20)
        except StorageError as e:
            # the label features do not need the index: run without it, and say so loudly
            log.error("the image index is unavailable, so /search, /index and /labels stats are too: %s", e)
            index = UnavailableIndex(str(e))
        except BaseException:
            await store.close()
            raise
        session = aiohttp.ClientSession(headers={"User-Agent": "Wakeru (image classifier bot)"})
        return cls(config, store, transport or make_transport(config), session, index)

    async def start(self) -> None:
        await self.transport.start()  # idempotent: a reconnecting client calls it again

    def label_changed(self, action: str) -> None:
        metrics.LABEL_CHANGES.labels(action).inc()

    def track(self, task: asyncio.Task[Any] | None = None) -> None:
        """Count the current handler as in-flight work until it ends (shutdown waits for it)."""
        task = task or asyncio.current_task()
        if task is not None and task not in self._work:
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def drain(self, grace_s: float) -> None:
        """Stop taking new work; give the work in flight `grace_s` to finish, then answer
        what is left as unavailable and let the handlers send those answers."""
        self.draining = True
        self.transport.stop_accepting()
        started = time.monotonic()
        if self._work:
            log.info("shutting down: waiting up to %.0f s for %d handler(s) in flight", grace_s, len(self._work))
            await asyncio.wait(set(self._work), timeout=grace_s)
        if self._work:
            log.warning(
                "shutting down: %d handler(s) still busy after %.0f s; answering them as unavailable",
                len(self._work),
                grace_s,
            )
            self.transport.abandon("the bot is shutting down")
            await asyncio.wait(set(self._work), timeout=5.0)
        log.info("shutting down: in-flight work settled in %.1f s", time.monotonic() - started)

    async def close(self) -> None:
        await self.backfills.close()  # paused, not lost: they resume at the next start
        await self.transport.close()
        await self.session.close()
        await self.index.close()
        await self.store.close()

    def is_image(self, attachment: AttachmentLike) -> bool:
        return is_image(attachment, self.config)
