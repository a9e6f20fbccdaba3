"""Attachment downloads: host allowlist, byte caps, the media-proxy rendition and its fallback."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from bot.services.attachments import AttachmentError, Downloader, image_format, resized_url
from tests.conftest import make_config
from wakeru.protocol import ErrorCode

FORMATS = ("jpeg", "png", "gif", "webp", "bmp")


@dataclass
class Att:
    url: str
    proxy_url: str
    size: int
    width: int | None = 4000
    height: int | None = 3000
    filename: str = "photo.jpg"
    content_type: str | None = "image/jpeg"


@pytest.mark.parametrize(
    "content_type, filename, expected",
    [
        ("image/jpeg", "x.jpg", "jpeg"),
        ("image/png; charset=binary", "x", "png"),
        ("image/webp", "x", "webp"),
        ("image/svg+xml", "x.svg", None),
        ("application/pdf", "x.jpg", None),
        ("text/plain", "a.png", None),
        (None, "photo.JPEG", "jpeg"),
        (None, "scan.tiff", None),
        (None, "notes.txt", None),
        ("image/tiff", "x", None),
    ],
)
def test_image_format(content_type, filename, expected):
    assert image_format(content_type, filename, FORMATS) == expected


def test_resized_url_keeps_signature_and_aspect():
    url = "https://media.discordapp.net/attachments/1/2/a.jpg?ex=1&is=2&hm=abc&width=10"
    q = parse_qs(urlsplit(resized_url(url, 4000, 3000, 600)).query)
    assert q == {"ex": ["1"], "is": ["2"], "hm": ["abc"], "width": ["800"], "height": ["600"]}
    # a panorama keeps its short side at the model's size
    q = parse_qs(urlsplit(resized_url(url, 8000, 1000, 256)).query)
    assert (q["width"], q["height"]) == (["2048"], ["256"])
    assert resized_url(url, 500, 400, 400) is None  # already small: no rendition
    assert resized_url(url, None, None, 256) is None


@pytest.fixture
async def server():
    """A local 'CDN': /big is 3 MB, /lying claims nothing and streams 3 MB, /proxy can fail."""
    calls: list[str] = []
    state = {"proxy_status": 200}

    async def big(request):
        calls.append(request.path_qs)
        return web.Response(body=b"x" * 3_000_000)

    async def small(request):
        calls.append(request.path_qs)
        return web.Response(body=b"small-bytes")

    async def lying(request):
        calls.append(request.path_qs)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(30):
            await resp.write(b"y" * 100_000)
        return resp

    async def proxy(request):
        calls.append(request.path_qs)
        if state["proxy_status"] != 200:
            return web.Response(status=state["proxy_status"])
        return web.Response(body=b"resized:" + request.query["width"].encode())

    async def redirect(request):
        raise web.HTTPFound("http://example.com/evil")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    app.router.add_get("/lying", lying)
    app.router.add_get("/proxy", proxy)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield f"http://127.0.0.1:{port}", calls, state, session
    await runner.cleanup()


def _downloader(session, **attachments):
    config = make_config(
        images={"max_bytes": 2_000_000},
        attachments={"allowed_hosts": ["127.0.0.1"], "resize_above_bytes": 1_000_000, **attachments},
    )
    return _Fetcher(Downloader(config, session))


class _Fetcher:
    """The downloader with the model's input side fixed at 384."""

    def __init__(self, downloader):
        self.downloader = downloader

    async def fetch(self, attachment):
        return await self.downloader.fetch(attachment, 384)


async def test_small_images_are_downloaded_as_they_are(server):
    base, calls, _, session = server
    data = await _downloader(session).fetch(Att(f"{base}/small", f"{base}/proxy?hm=1", size=11, width=300, height=200))
    assert data == b"small-bytes" and calls == ["/small"]


async def test_large_images_come_from_the_media_proxy_resized(server):
    base, calls, _, session = server
    data = await _downloader(session).fetch(Att(f"{base}/big", f"{base}/proxy?ex=1&hm=2", size=3_000_000))
    assert data == b"resized:512"
    assert calls == ["/proxy?ex=1&hm=2&width=512&height=384"]  # 4000×3000 → shortest side 384


async def test_a_failing_proxy_falls_back_to_the_original(server):
    base, calls, state, session = server
    state["proxy_status"] = 415
    data = await _downloader(session).fetch(Att(f"{base}/small", f"{base}/proxy", size=1_500_000))
    assert data == b"small-bytes" and calls[-1] == "/small"


async def test_too_large_without_a_rendition_is_refused_before_downloading(server):
    base, calls, state, session = server
    state["proxy_status"] = 500
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att(f"{base}/big", f"{base}/proxy", size=3_000_000))
    assert e.value.code is ErrorCode.TOO_LARGE and "limit" in e.value.detail
    assert "/big" not in calls


async def test_a_body_longer_than_claimed_is_cut_off(server):
    base, _, _, session = server
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att(f"{base}/lying", f"{base}/proxy", size=10, width=10, height=10))
    assert e.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    "url", ["http://example.com/a.jpg", "file:///etc/passwd", "http://127.0.0.1.evil.com/x", "ftp://127.0.0.1/x"]
)
async def test_hosts_outside_the_allowlist_are_never_contacted(server, url):
    _, calls, _, session = server
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att(url, url, size=10, width=10, height=10))
    assert e.value.code is ErrorCode.UNREADABLE and "not an allowed" in e.value.detail
    assert calls == []


async def test_redirects_are_not_followed(server):
    base, _, _, session = server
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att(f"{base}/redirect", f"{base}/redirect", size=10, width=10, height=10))
    assert e.value.code is ErrorCode.UNREADABLE and "302" in e.value.detail


async def test_http_errors_and_dead_hosts_are_reported(server):
    base, _, _, session = server
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att(f"{base}/missing", f"{base}/missing", size=10, width=10, height=10))
    assert "404" in e.value.detail
    with pytest.raises(AttachmentError) as e:
        await _downloader(session).fetch(Att("http://127.0.0.1:9/x", "http://127.0.0.1:9/x", size=10))
    assert e.value.code is ErrorCode.UNREADABLE and "failed" in e.value.detail
