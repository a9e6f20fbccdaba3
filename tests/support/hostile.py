"""A corpus of broken and hostile files, each with the error code it must produce."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib

from PIL import Image

from wakeru.protocol import ErrorCode


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares width × height RGB pixels, with the given IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    if idat:
        out += _png_chunk(b"IDAT", idat)
    return out + _png_chunk(b"IEND", b"")


def png_bomb(width: int = 8000, height: int = 6000) -> bytes:
    """A real decompression bomb: a valid PNG of width × height black pixels, ~100 KB compressed."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (width * 3)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return png_header_only(width, height, b"".join(parts))


def gif_with_screen(width: int, height: int) -> bytes:
    """A 1×1 GIF frame on a logical screen of width × height."""
    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A tiny JPEG whose SOF marker is rewritten to declare width × height."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            break
        i += 2 + length
    return bytes(data)


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _archive_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cat.jpg", encoded(Image.new("RGB", (8, 8)), "JPEG"))
    return buf.getvalue()


def _archive_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        payload = encoded(Image.new("RGB", (8, 8)), "PNG")
        info = tarfile.TarInfo("x.png")
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment; a scan runs to the next real marker."""
    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        out.append((marker, i, end))
        i = end
    return out


def jpeg_scan_bomb(side: int = 512, repeats: int = 300) -> bytes:
    """A progressive JPEG whose last refinement scan is repeated: every copy is decoded over
    the whole image (at 6000×6000, 1,000 copies took 21 s in a 270 KB file)."""
    data = encoded(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True, quality=90)
    _, start, end = [s for s in _jpeg_segments(data) if s[0] == 0xDA][-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def jpeg_marker_flood(count: int = 200_000) -> bytes:
    """Empty APP15 markers before the frame header: Pillow parses each one in Python."""
    data = encoded(Image.new("RGB", (8, 8)), "JPEG")
    return data[:2] + b"\xff\xef\x00\x02" * count + data[2:]


def jpeg_junk_flood(count: int = 1_000_000) -> bytes:
    """Junk between markers, which Pillow skips one byte at a time in Python."""
    data = encoded(Image.new("RGB", (8, 8)), "JPEG")
    first = 4 + struct.unpack(">H", data[4:6])[0]  # after SOI and the APP0 segment
    return data[:first] + b"\x00" * count + data[first:]


def png_chunk_flood(count: int = 200_000) -> bytes:
    """Empty private ancillary chunks before the image data."""
    data = encoded(Image.new("RGB", (8, 8)), "PNG")
    ihdr_end = 8 + 12 + 13
    return data[:ihdr_end] + _png_chunk(b"prVt", b"") * count + data[ihdr_end:]


def gif_extension_flood(count: int = 100_000) -> bytes:
    """Empty comment extensions before the first frame, each read by Pillow in Python."""
    data = encoded(Image.new("P", (8, 8)), "GIF")
    first_frame = data.index(b"\x2c", 13)
    return data[:first_frame] + b"\x21\xfe\x00" * count + data[first_frame:]


def _without_global_palette(gif: bytes) -> bytes:
    """The same GIF with its global colour table cut out (the flag cleared)."""
    flags = gif[10]
    table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
    return gif[:10] + bytes([flags & 0x7F]) + gif[11:13] + gif[13 + table :]


def corpus() -> dict[str, tuple[bytes, ErrorCode]]:
    """name → (file bytes, expected error code), with default limits (40 MP, JPEG/PNG/GIF/WebP/BMP)."""
    good_jpeg = encoded(Image.new("RGB", (64, 48), (200, 10, 10)), "JPEG", quality=90)
    good_png = encoded(Image.new("RGB", (64, 48), (10, 200, 10)), "PNG")
    good_webp = encoded(Image.new("RGB", (64, 48), (10, 10, 200)), "WEBP")
    broken_crc = bytearray(good_png)
    broken_crc[30] ^= 0xFF  # inside IHDR: CRC no longer matches
    return {
        "empty": (b"", ErrorCode.EMPTY),
        "garbage": (bytes((i * 131 + 7) % 256 for i in range(4096)), ErrorCode.UNSUPPORTED_FORMAT),
        "plain-text": ("犬の写真です".encode(), ErrorCode.UNSUPPORTED_FORMAT),
        "text-starting-BM": (b"BMW is a car maker\n" * 4, ErrorCode.UNSUPPORTED_FORMAT),
        "svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        "svg-with-xml-decl-and-bom": (
            b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- x -->\n<svg xmlns="http://www.w3.org/2000/svg"/>',
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        "html": (
            b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        "pdf": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF", ErrorCode.UNSUPPORTED_FORMAT),
        "eps": (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n",
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        "eps-binary-header": (
            b"\xc5\xd0\xd3\xc6" + b"\x00" * 28 + b"%!PS-Adobe-3.0 EPSF-3.0\n",
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        "tiff": (encoded(Image.new("RGB", (8, 8)), "TIFF"), ErrorCode.UNSUPPORTED_FORMAT),
        "tiff-bigendian-junk": (b"MM\x00*" + b"\xff" * 60, ErrorCode.UNSUPPORTED_FORMAT),
        "zip": (_archive_zip(), ErrorCode.UNSUPPORTED_FORMAT),
        "tar": (_archive_tar(), ErrorCode.UNSUPPORTED_FORMAT),
        "gzip": (gzip.compress(good_png), ErrorCode.UNSUPPORTED_FORMAT),
        "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, ErrorCode.UNSUPPORTED_FORMAT),
        "ico": (encoded(Image.new("RGB", (16, 16)), "ICO"), ErrorCode.UNSUPPORTED_FORMAT),
        "truncated-jpeg": (good_jpeg[: len(good_jpeg) // 2], ErrorCode.CORRUPT),
        "truncated-png": (good_png[: len(good_png) - 30], ErrorCode.CORRUPT),
        "truncated-webp": (good_webp[: len(good_webp) // 2], ErrorCode.CORRUPT),
        "png-bad-crc": (bytes(broken_crc), ErrorCode.CORRUPT),
        "jpeg-magic-then-garbage": (b"\xff\xd8\xff\xe0" + b"\x13\x37" * 500, ErrorCode.CORRUPT),
        "gif-header-only": (b"GIF89a\x10\x00\x10\x00", ErrorCode.CORRUPT),
        "png-zero-width": (png_header_only(0, 10), ErrorCode.CORRUPT),
        "png-declares-2.5-gigapixels": (
            png_header_only(50_000, 50_000, zlib.compress(b"\x00" * 100)),
            ErrorCode.TOO_MANY_PIXELS,
        ),
        "png-bomb-48mp": (png_bomb(), ErrorCode.TOO_MANY_PIXELS),
        "gif-screen-65535x65535": (gif_with_screen(65535, 65535), ErrorCode.TOO_MANY_PIXELS),
        "jpeg-declares-65000x65000": (jpeg_with_size(65000, 65000), ErrorCode.TOO_MANY_PIXELS),
        "bmp-declares-huge": (_bmp_declaring(30000, 30000), ErrorCode.TOO_MANY_PIXELS),
        "jpeg-300-repeated-scans": (jpeg_scan_bomb(), ErrorCode.CORRUPT),
        "jpeg-200k-app-markers": (jpeg_marker_flood(), ErrorCode.CORRUPT),
        "jpeg-1mb-junk-between-markers": (jpeg_junk_flood(), ErrorCode.CORRUPT),
        "png-200k-chunks": (png_chunk_flood(), ErrorCode.CORRUPT),
        "gif-100k-extensions": (gif_extension_flood(), ErrorCode.CORRUPT),
        "gif-no-global-palette-100k-extensions": (_without_global_palette(gif_extension_flood()), ErrorCode.CORRUPT),
        "png-strip-1x60000": (encoded(Image.new("L", (1, 60_000)), "PNG"), ErrorCode.BAD_DIMENSIONS),
        "png-strip-40000000x1": (
            png_header_only(40_000_000, 1, zlib.compress(b"\x00" * 1000)),
            ErrorCode.BAD_DIMENSIONS,
        ),
    }


def _bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)
