"""Identify a file's format from its first bytes, never from its name.

Only the formats listed in images.formats are ever handed to Pillow, and then only
to that format's plugin, so an EPS or PDF can never reach Ghostscript or any other
external delegate. Everything else is named in the error so the user knows why.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Sniffed:
    name: str  # our name: jpeg, png, gif, webp, bmp, tiff, or a descriptive name of a refused kind
    description: str  # for people: "JPEG image", "SVG drawing", "ZIP archive", …
    pillow_format: str | None = None  # the Pillow plugin that may decode it; None = never decodable


_DECODABLE = {
    "jpeg": Sniffed("jpeg", "JPEG image", "JPEG"),
    "png": Sniffed("png", "PNG image", "PNG"),
    "gif": Sniffed("gif", "GIF image", "GIF"),
    "webp": Sniffed("webp", "WebP image", "WEBP"),
    "bmp": Sniffed("bmp", "BMP image", "BMP"),
    "tiff": Sniffed("tiff", "TIFF image", "TIFF"),
}

# (prefix, offset, name, description) of formats we recognise only to refuse them clearly.
_REFUSED_MAGIC: tuple[tuple[bytes, int, str, str], ...] = (
    (b"%PDF-", 0, "pdf", "PDF document"),
    (b"%!PS", 0, "eps", "PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", 0, "eps", "PostScript/EPS file"),
    (b"PK\x03\x04", 0, "zip", "ZIP archive"),
    (b"PK\x05\x06", 0, "zip", "ZIP archive"),
    (b"\x1f\x8b", 0, "gzip", "gzip archive"),
    (b"BZh", 0, "bzip2", "bzip2 archive"),
    (b"\xfd7zXZ\x00", 0, "xz", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7z", "7-Zip archive"),
    (b"Rar!\x1a\x07", 0, "rar", "RAR archive"),
    (b"ustar", 257, "tar", "tar archive"),
    (b"\x00\x00\x01\x00", 0, "ico", "Windows icon"),
    (b"\x00\x00\x02\x00", 0, "cur", "Windows cursor"),
    (b"8BPS", 0, "psd", "Photoshop document"),
    (b"\xff\x4f\xff\x51", 0, "jpeg2000", "JPEG 2000 image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "jpeg2000", "JPEG 2000 image"),
    (b"\xff\x0a", 0, "jxl", "JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "jxl", "JPEG XL image"),
    (b"qoif", 0, "qoi", "QOI image"),
    (b"\x76\x2f\x31\x01", 0, "exr", "OpenEXR image"),
    (b"#?RADIANCE", 0, "hdr", "Radiance HDR image"),
    (b"MZ", 0, "exe", "Windows executable"),
    (b"\x7fELF", 0, "elf", "ELF executable"),
    (b"OggS", 0, "ogg", "Ogg media"),
    (b"ID3", 0, "mp3", "MP3 audio"),
    (b"fLaC", 0, "flac", "FLAC audio"),
    (b"\x1aE\xdf\xa3", 0, "mkv", "Matroska/WebM video"),
    (b"SQLite format 3\x00", 0, "sqlite", "SQLite database"),
    (b"{\\rtf", 0, "rtf", "RTF document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "ole", "Microsoft Office document"),
)

_FTYP_IMAGE_BRANDS = {
    b"heic": ("heic", "HEIC image"),
    b"heix": ("heic", "HEIC image"),
    b"hevc": ("heic", "HEIC image"),
    b"heim": ("heic", "HEIC image"),
    b"heis": ("heic", "HEIC image"),
    b"mif1": ("heif", "HEIF image"),
    b"msf1": ("heif", "HEIF image"),
    b"avif": ("avif", "AVIF image"),
    b"avis": ("avif", "AVIF image"),
}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_MARKUP = re.compile(rb"<\s*(svg|!doctype\s+html|html|head|body|script|div|p|a|iframe|\?xml|!--)\b", re.I)


def _sniff_markup(head: bytes) -> Sniffed | None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        return None
    if re.search(rb"<\s*svg\b", head, re.I):
        return Sniffed("svg", "SVG drawing")
    m = _MARKUP.match(text)
    if m is None:
        return Sniffed("markup", "XML/HTML document")
    tag = m.group(1).lower()
    if tag in (b"?xml", b"!--"):
        return Sniffed("xml", "XML document")
    return Sniffed("html", "HTML page")


def _looks_like_text(head: bytes) -> bool:
    # a multi-byte character cut at the end of the sample is still text
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return len(text) > 0 and printable / len(text) > 0.95


def sniff(data: bytes) -> Sniffed:
    """Name the format of `data` from its magic bytes."""
    head = data[:1024]
    if head.startswith(b"\xff\xd8\xff"):
        return _DECODABLE["jpeg"]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _DECODABLE["png"]
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _DECODABLE["gif"]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _DECODABLE["webp"]
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return _DECODABLE["bmp"]
    if head[:4] in _TIFF_MAGIC:
        return _DECODABLE["tiff"]
    for magic, offset, name, description in _REFUSED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return Sniffed(name, description)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _FTYP_IMAGE_BRANDS:
            return Sniffed(*_FTYP_IMAGE_BRANDS[brand])
        return Sniffed("video", "MP4/QuickTime video")
    if head[:4] == b"RIFF":
        return Sniffed("riff", f"RIFF {head[8:12].decode('latin-1').strip() or 'media'} file")
    markup = _sniff_markup(head)
    if markup is not None:
        return markup
    if _looks_like_text(head):
        return Sniffed("text", "text file")
    return Sniffed("unknown", "unrecognised data")
