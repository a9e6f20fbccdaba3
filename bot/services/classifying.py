"""Attachments or sample bytes → worker requests → ImageAnswers, concurrently per message."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from bot.services import metrics
from bot.services.attachments import AttachmentError, AttachmentLike, Downloader
from bot.transport import Reservation, WorkerTransport
from wakeru.config import Config
from wakeru.labels import label_name
from wakeru.logs import current_request_id, new_event_id
from wakeru.protocol import ClassifyRequest, ClassifyResult

log = logging.getLogger("wakeru.classify")


@dataclass(frozen=True, slots=True)
class ImageAnswer:
    """One image's answer: the name it was posted under and the worker's result."""

    filename: str
    result: ClassifyResult


# Before the worker reports its model's input size: enough for every supported model.
_UNKNOWN_INPUT_SIDE = 512


class Classifier:
    def __init__(self, config: Config, transport: WorkerTransport, downloader: Downloader):
        self.config = config
        self.transport = transport
        self.downloader = downloader
        self._numbers = itertools.count(1)

    def _request_id(self) -> str:
        """<event id>-<n>: the event's id (logs.request_context) ties the image to the post or command."""
        return f"{current_request_id() or new_event_id()}-{next(self._numbers)}"

    def _answered(self, answer: ImageAnswer, source: str, started: float) -> ImageAnswer:
        result, elapsed = answer.result, time.monotonic() - started
        metrics.observe_result(source, result, elapsed)
        outcome = result.error.value if result.error else "ok"
        log.info(
            "image %s: %s in %.0f ms",
            answer.filename,
            outcome,
            elapsed * 1000,
            extra={"request_id": result.id, "outcome": outcome},
        )
        return answer

    async def classify_bytes(
        self,
        filename: str,
        data: bytes,
        labels: tuple[str, ...],
        *,
        source: str = "command",
        request_id: str | None = None,
        started: float | None = None,
        reservation: Reservation | None = None,
        embed: bool = False,
        top_k: int = 3,
    ) -> ImageAnswer:
        """embed: also return the image's embedding (the same forward pass), for the image index;
        labels () with embed=True only embeds. A label's emoji (`犬=🐕`) is for answers only: the model
        sees the name."""
        started = time.monotonic() if started is None else started
        request = ClassifyRequest(
            id=request_id or self._request_id(),
            image=data,
            labels=tuple(label_name(label) for label in labels),
            top_k=top_k,
            deadline=time.time() + self.config.worker.request_timeout_s,
            embed=embed,
        )
        result = await self.transport.classify(request, reservation=reservation)
        return self._answered(ImageAnswer(filename, result), source, started)

    def rendition_side(self) -> int:
        """The shortest side worth downloading: configured, else the model's input size."""
        info = self.transport.info
        return self.config.attachments.resize_to or (info.input_size if info else _UNKNOWN_INPUT_SIDE)

    async def embed_query(self, query: str) -> ClassifyResult:
        """A search query's text embedding, made with the label templates' rule (the worker's query path)."""
        started = time.monotonic()
        request = ClassifyRequest(
            id=self._request_id(),
            image=b"",
            labels=(),
            deadline=time.time() + self.config.worker.request_timeout_s,
            query=query,
        )
        result = await self.transport.classify(request)
        metrics.observe_result("search", result, time.monotonic() - started)
        return result

    async def classify_attachment(
        self,
        attachment: AttachmentLike,
        labels: tuple[str, ...],
        *,
        source: str = "command",
        embed: bool = False,
        top_k: int = 3,
    ) -> ImageAnswer:
        started, request_id = time.monotonic(), self._request_id()
        # busy, failed or shutting down: say so now rather than download what nobody can classify;
        # the place holds the bytes the download may bring (the rendition is smaller: resized after)
        expected = min(attachment.size or self.config.images.max_bytes, self.config.images.max_bytes)
        place = self.transport.reserve(request_id, expected)
        if isinstance(place, ClassifyResult):
            return self._answered(ImageAnswer(attachment.filename, place), source, started)
        with place:  # given back if the download fails or the handler is cancelled
            try:
                data = await self.downloader.fetch(attachment, self.rendition_side())
            except AttachmentError as e:
                failed = ClassifyResult.failure(request_id, e.code, e.detail)
                return self._answered(ImageAnswer(attachment.filename, failed), source, started)
            return await self.classify_bytes(
                attachment.filename,
                data,
                labels,
                source=source,
                request_id=request_id,
                started=started,
                reservation=place,
                embed=embed,
                top_k=top_k,
            )

    async def classify_attachments(
        self,
        attachments: Iterable[AttachmentLike],
        labels: tuple[str, ...],
        *,
        source: str = "command",
        embed: bool = False,
        top_k: int = 3,
    ) -> list[ImageAnswer]:
        """top_k: how many labels each answer ranks (tags want up to 5)."""
        return list(
            await asyncio.gather(
                *(self.classify_attachment(a, labels, source=source, embed=embed, top_k=top_k) for a in attachments)
            )
        )
