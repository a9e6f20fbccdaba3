import pytest
from PIL import Image

from model_worker.image.sniff import sniff
from tests.support.hostile import encoded


@pytest.mark.parametrize(
    "fmt, name", [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tiff")]
)
def test_real_files_are_recognised(fmt, name):
    kind = sniff(encoded(Image.new("RGB", (4, 4)), fmt))
    assert kind.name == name and kind.pillow_format is not None


@pytest.mark.parametrize(
    "data, name",
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video"),
        (b"\x00\x00\x00\x1cftypavif", "avif"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "riff"),
        (b"  \n<HTML><p>hi", "html"),
        (b"<?xml version='1.0'?><rss/>", "xml"),
        (b"\x7fELF\x02\x01\x01", "elf"),
        (b"BM" + b"\x00" * 12 + b"\x99\x00\x00\x00", "unknown"),  # "BM" without a plausible DIB header
        ("ラーメン".encode()[:-1], "text"),  # text cut inside a multi-byte character is still text
    ],
)
def test_refused_kinds_are_named(data, name):
    kind = sniff(data)
    assert kind.name == name and kind.pillow_format is None
