"""Getting image bytes out of Discord attachments, safely.

Only hosts in `attachments.allowed_hosts` are contacted, redirects are not
followed (they could lead anywhere), and bodies are streamed with a byte cap so a
lying `size` cannot exhaust memory. Large images are fetched as the media proxy's
resized rendition first: fewer bytes to download, decode and queue. Bytes, not
URLs, go to the worker: attachment URLs are signed and expire.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from wakeru.config import Config
from wakeru.protocol import ErrorCode

log = logging.getLogger("wakeru.attachments")

_CHUNK = 64 * 1024
# Downloads at once: a burst of posts must not hold hundreds of 25 MiB bodies in memory.
_PARALLEL_DOWNLOADS = 8
# content types and extensions that are worth sending to the worker (which sniffs the bytes anyway)
_TYPE_NAMES = {
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "pjpeg": "jpeg",
    "png": "png",
    "apng": "png",
    "gif": "gif",
    "webp": "webp",
    "bmp": "bmp",
    "x-ms-bmp": "bmp",
    "tiff": "tiff",
}
_EXTENSIONS = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jfif": "jpeg",
    ".png": "png",
    ".apng": "png",
    ".gif": "gif",
    ".webp": "webp",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}


class AttachmentLike(Protocol):
    """What is read of a discord.Attachment (anything with these fields will do)."""

    @property
    def filename(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def size(self) -> int | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def url(self) -> str: ...
    @property
    def proxy_url(self) -> str | None: ...


class AttachmentError(Exception):
    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def image_format(content_type: str | None, filename: str, allowed: tuple[str, ...]) -> str | None:
    """The allowed image format an attachment claims to be, or None to ignore it."""
    if content_type:
        main, _, sub = content_type.split(";")[0].strip().lower().partition("/")
        if main != "image":
            return None
        name = _TYPE_NAMES.get(sub)
    else:  # Discord leaves content_type out for some uploads: trust the extension
        name = _EXTENSIONS.get(PurePosixPath(filename.lower()).suffix)
    return name if name in allowed else None


def is_image(attachment: AttachmentLike, config: Config) -> bool:
    return image_format(attachment.content_type, attachment.filename, config.images.formats) is not None


def resized_url(proxy_url: str, width: int | None, height: int | None, shortest: int) -> str | None:
    """The media proxy URL for a rendition whose shortest side is `shortest`, or None if not smaller.

    Shortest, not longest: the model's processors resize (and crop) to a square, so
    each side must stay at least the model's input size or a panorama would be upscaled."""
    if not width or not height or min(width, height) <= shortest:
        return None
    scale = shortest / min(width, height)
    w, h = max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
    parts = urlsplit(proxy_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("width", "height")]
    query += [("width", str(w)), ("height", str(h))]  # the signature params (ex, is, hm) stay as they are
    return urlunsplit(parts._replace(query=urlencode(query)))


class Downloader:
    def __init__(self, config: Config, session: aiohttp.ClientSession):
        self.hosts = set(config.attachments.allowed_hosts)
        self.max_bytes = config.images.max_bytes
        self.max_pixels = config.images.max_pixels
        self.resize_above = config.attachments.resize_above_bytes
        self.timeout = aiohttp.ClientTimeout(total=config.attachments.timeout_s)
        self.session = session
        self._slots = asyncio.Semaphore(_PARALLEL_DOWNLOADS)

    async def fetch(self, attachment: AttachmentLike, shortest: int) -> bytes:
        """The image bytes of a discord.Attachment (or anything with its fields); AttachmentError otherwise.

        `shortest`: the side a media-proxy rendition needs at least (the model's input size)."""
        size = attachment.size or 0
        pixels = (attachment.width or 0) * (attachment.height or 0)
        # large files, and small files of huge images (which the worker would refuse by pixel count)
        if (size >= self.resize_above or pixels > self.max_pixels) and attachment.proxy_url:
            small = resized_url(attachment.proxy_url, attachment.width, attachment.height, shortest)
            if small:
                try:
                    return await self.get(small)
                except AttachmentError as e:  # best effort: the original is the fallback
                    log.info("media proxy rendition failed (%s); downloading the original", e.detail)
        if size > self.max_bytes:
            raise AttachmentError(ErrorCode.TOO_LARGE, f"{_mib(size)}; the limit is {_mib(self.max_bytes)}")
        return await self.get(attachment.url)

    async def get(self, url: str) -> bytes:
        host = (urlsplit(url).hostname or "").lower()
        if urlsplit(url).scheme not in ("http", "https") or host not in self.hosts:
            raise AttachmentError(ErrorCode.UNREADABLE, f"the host {host or url!r} is not an allowed attachment host")
        async with self._slots:
            return await self._download(url)

    async def _download(self, url: str) -> bytes:
        try:
            async with self.session.get(url, allow_redirects=False, timeout=self.timeout) as response:
                if response.status != 200:
                    raise AttachmentError(ErrorCode.UNREADABLE, f"HTTP {response.status}")
                if response.content_length is not None and response.content_length > self.max_bytes:
                    raise AttachmentError(
                        ErrorCode.TOO_LARGE, f"{_mib(response.content_length)}; the limit is {_mib(self.max_bytes)}"
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > self.max_bytes:  # the header may lie or be absent
                        raise AttachmentError(ErrorCode.TOO_LARGE, f"more than {_mib(self.max_bytes)}")
                return bytes(body)
        except AttachmentError:
            raise
        except asyncio.TimeoutError:
            raise AttachmentError(ErrorCode.UNREADABLE, "the download timed out") from None
        except aiohttp.ClientError as e:
            raise AttachmentError(ErrorCode.UNREADABLE, f"download failed: {type(e).__name__}") from None


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
