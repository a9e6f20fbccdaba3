"""The bot's long-lived parts, shared by every handler: config, label store, worker transport, downloader."""

from __future__ import annotations

import aiohttp

from wakeru.config import Config

from .attachments import Downloader, is_image
from .classifying import Classifier
from .samples import sample_names
from .storage import LabelStore
from .transport import LocalWorkerTransport, WorkerTransport


class App:
    def __init__(self, config: Config, store: LabelStore, transport: WorkerTransport, session: aiohttp.ClientSession):
        self.config = config
        self.store = store
        self.transport = transport
        self.session = session
        self.classifier = Classifier(config, transport, Downloader(config, session))
        self.samples = sample_names(config.discord.samples_dir, config.images.formats)
        self.label_changes = 0  # label-set changes since start (for logs and, later, metrics)

    @classmethod
    async def open(cls, config: Config, transport: WorkerTransport | None = None) -> "App":
        """Open the database first: a bad storage.url should fail before a model is loaded."""
        store = await LabelStore.open(config.storage.url)
        session = aiohttp.ClientSession(headers={"User-Agent": "Wakeru (image classifier bot)"})
        return cls(config, store, transport or LocalWorkerTransport(config), session)

    async def start(self) -> None:
        await self.transport.start()  # idempotent: a reconnecting client calls it again

    async def close(self) -> None:
        await self.transport.close()
        await self.session.close()
        await self.store.close()

    def is_image(self, attachment) -> bool:
        return is_image(attachment, self.config)
