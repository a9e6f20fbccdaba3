"""Attachments or sample bytes → worker requests → ImageAnswers, concurrently per message."""

from __future__ import annotations

import asyncio
import time
import uuid

from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult

from .attachments import AttachmentError, Downloader
from .render import ImageAnswer
from .transport import WorkerTransport

# Before the worker reports its model's input size: enough for every supported model.
_UNKNOWN_INPUT_SIDE = 512


class Classifier:
    def __init__(self, config: Config, transport: WorkerTransport, downloader: Downloader):
        self.config = config
        self.transport = transport
        self.downloader = downloader

    def _request_id(self) -> str:
        return uuid.uuid4().hex

    async def classify_bytes(self, filename: str, data: bytes, labels: tuple[str, ...]) -> ImageAnswer:
        request = ClassifyRequest(id=self._request_id(), image=data, labels=labels, top_k=3,
                                  deadline=time.time() + self.config.worker.request_timeout_s)
        return ImageAnswer(filename, await self.transport.classify(request))

    def rendition_side(self) -> int:
        """The shortest side worth downloading: configured, else the model's input size."""
        info = getattr(self.transport, "info", None) or {}
        return self.config.attachments.resize_to or info.get("input_size") or _UNKNOWN_INPUT_SIDE

    async def classify_attachment(self, attachment, labels: tuple[str, ...]) -> ImageAnswer:
        try:
            data = await self.downloader.fetch(attachment, self.rendition_side())
        except AttachmentError as e:
            return ImageAnswer(attachment.filename, ClassifyResult.failure(self._request_id(), e.code, e.detail))
        return await self.classify_bytes(attachment.filename, data, labels)

    async def classify_attachments(self, attachments, labels: tuple[str, ...]) -> list[ImageAnswer]:
        return list(await asyncio.gather(*(self.classify_attachment(a, labels) for a in attachments)))
