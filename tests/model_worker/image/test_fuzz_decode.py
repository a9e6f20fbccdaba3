"""Property-based fuzzing of the worker's image path: untrusted bytes → RGB image → model input.

The property, for every input and every set of limits: `decode_image` either returns a sane RGB image within the
limits (which the preprocessors then turn into model input of the right shape), or raises ImageError carrying one of
the decode ErrorCodes. Any other exception, or an example slower than the deadline, fails the test.

Inputs: arbitrary bytes; magic bytes of accepted and refused formats followed by anything; small valid images in
every accepted format (JPEG, PNG/APNG, GIF incl. animated, WebP incl. animated, BMP, TIFF incl. multi-page) made with
Pillow and then mutated: header dimension, length and enum fields rewritten (PNG CRCs optionally repaired so the
change gets past the CRC check), bytes flipped, runs inserted, deleted or repeated, truncation anywhere.

Time-bounded for CI: derandomized (the same examples every run, no example database, nothing written into the repo).
WAKERU_FUZZ_EXAMPLES=N runs N examples per test instead, and WAKERU_FUZZ_RANDOM=1 draws new examples each run
(a failure then prints the seed to reproduce it), e.g.
    WAKERU_FUZZ_EXAMPLES=20000 WAKERU_FUZZ_RANDOM=1 pytest tests/model_worker/test_fuzz_decode.py
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from PIL import Image

from model_worker.image.decode import MAX_SIDE, DecodeLimits, ImageError, decode_image
from model_worker.image.preprocess import FixedResolution, NaFlex, _Normalise
from model_worker.image.sniff import sniff
from tests.conftest import make_config
from wakeru.protocol import ErrorCode

_EXAMPLES = int(os.environ.get("WAKERU_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "wakeru-fuzz-decode",
    # reproducible: the examples depend only on the test, not on the run (WAKERU_FUZZ_RANDOM=1: new ones each run)
    derandomize=not os.environ.get("WAKERU_FUZZ_RANDOM"),
    database=None,  # no .hypothesis/examples in the repository
    deadline=timedelta(seconds=5),  # per example; nothing here may take longer on a loaded CI core
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("wakeru-fuzz-decode")


def examples(default: int) -> settings:
    return settings(FUZZ, max_examples=_EXAMPLES or default)


pytestmark = [
    pytest.mark.timeout(300),  # a hang fails the test instead of stalling CI for pytest's 10 minutes
    # decode.py silences these for the whole process; pytest's per-test warning capture brings them back
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
]

DECODE_CODES = {
    ErrorCode.EMPTY,
    ErrorCode.TOO_LARGE,
    ErrorCode.TOO_MANY_PIXELS,
    ErrorCode.BAD_DIMENSIONS,
    ErrorCode.UNSUPPORTED_FORMAT,
    ErrorCode.CORRUPT,
}

# ---------------------------------------------------------------- limits

DEFAULT = DecodeLimits.from_config(make_config().images)
WITH_TIFF = DecodeLimits(DEFAULT.max_bytes, DEFAULT.max_pixels, DEFAULT.formats | {"tiff"})
# small limits: the 16×12 seeds (192 px) pass, patched headers mostly do not; big seeds hit max_bytes
SMALL = DecodeLimits(max_bytes=4096, max_pixels=256, formats=frozenset({"jpeg", "png", "gif", "webp", "bmp", "tiff"}))
TINY = DecodeLimits(max_bytes=600, max_pixels=64, formats=frozenset({"png", "gif"}))
ALL_LIMITS = [DEFAULT, WITH_TIFF, WITH_TIFF, SMALL, TINY]  # weighted towards limits that let the seeds through
DRAFTS = [None, (224, 224), (8, 8), (1, 1)]

# What the worker does next with a decoded image: the two kinds of preprocessing rule.
_NORM = _Normalise(torch.ones(3), torch.zeros(3))
PREPROCESSORS = [
    FixedResolution(resize={"height": 32, "width": 32}, crop=None, resample=Image.Resampling.BICUBIC, normalise=_NORM),
    FixedResolution(resize={"shortest_edge": 24}, crop=(24, 24), resample=Image.Resampling.BICUBIC, normalise=_NORM),
    NaFlex(patch_size=4, max_num_patches=16, resample=Image.Resampling.BILINEAR, normalise=_NORM),
]

assert {"jpeg", "png", "gif", "webp", "bmp"} <= DEFAULT.formats, DEFAULT.formats  # the config the seeds cover


# ---------------------------------------------------------------- seeds: small valid images in every format


def _picture(mode: str, size=(16, 12), shade: int = 0) -> Image.Image:
    w, h = size
    x = np.arange(w, dtype=np.uint16)[None, :] * 255 // max(w - 1, 1)
    y = np.arange(h, dtype=np.uint16)[:, None] * 255 // max(h - 1, 1)
    rgb = np.stack(
        [np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)), np.full((h, w), (shade * 97) % 256, np.uint16)],
        axis=-1,
    ).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        im.putalpha(Image.fromarray(rgb[..., 0]))
        return im
    if mode == "P":
        return im.quantize(16)
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    return im.convert(mode)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _animated(fmt: str, **kw) -> bytes:
    frames = [_picture("RGB", shade=i) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)


def _seeds() -> dict[str, tuple[str, bytes]]:
    """name → (our format name, bytes)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    p_transparent = _picture("P")
    seeds = {
        "jpeg-rgb": ("jpeg", _save(_picture("RGB"), "JPEG", quality=80)),
        "jpeg-grey": ("jpeg", _save(_picture("L"), "JPEG")),
        "jpeg-cmyk": ("jpeg", _save(_picture("CMYK"), "JPEG")),
        "jpeg-progressive-exif": ("jpeg", _save(_picture("RGB", (40, 30)), "JPEG", progressive=True, exif=exif)),
        "png-rgb": ("png", _save(_picture("RGB"), "PNG")),
        "png-rgba": ("png", _save(_picture("RGBA"), "PNG")),
        "png-palette-trns": ("png", _save(p_transparent, "PNG", transparency=0)),
        "png-grey16": ("png", _save(_picture("I;16"), "PNG")),
        "png-1bit-interlaced": ("png", _save(_picture("1"), "PNG", interlace=1)),
        "apng": ("png", _animated("PNG")),
        "gif": ("gif", _save(_picture("P"), "GIF", comment=b"hello")),
        "gif-animated": ("gif", _animated("GIF")),
        "webp-lossy": ("webp", _save(_picture("RGB"), "WEBP", quality=50)),
        "webp-lossless-alpha": ("webp", _save(_picture("RGBA"), "WEBP", lossless=True)),
        "webp-animated": ("webp", _animated("WEBP")),
        "bmp-rgb": ("bmp", _save(_picture("RGB"), "BMP")),
        "bmp-palette": ("bmp", _save(_picture("P"), "BMP")),
        "bmp-1bit": ("bmp", _save(_picture("1"), "BMP")),
        "tiff-raw": ("tiff", _save(_picture("RGB"), "TIFF")),
        "tiff-lzw": ("tiff", _save(_picture("RGB"), "TIFF", compression="tiff_lzw")),
        "tiff-deflate-rgba": ("tiff", _save(_picture("RGBA"), "TIFF", compression="tiff_adobe_deflate")),
        "tiff-jpeg": ("tiff", _save(_picture("RGB"), "TIFF", compression="jpeg")),
        "tiff-multipage": ("tiff", _animated("TIFF", compression="packbits")),
    }
    return seeds


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)


# ---------------------------------------------------------------- where the interesting fields are

# (offset, size in bytes, byte order, kind): kind "dim" (a width/height/position), "len" (a length, count or offset),
# "enum" (a type, depth, mode or flag byte)
Field = tuple[int, int, str, str]


def _png_fields(d: bytes) -> list[Field]:
    out, pos = [], 8
    while pos + 8 <= len(d):
        length = int.from_bytes(d[pos : pos + 4], "big")
        kind = d[pos + 4 : pos + 8]
        out.append((pos, 4, "big", "len"))
        body = pos + 8
        if kind == b"IHDR":
            out += [
                (body, 4, "big", "dim"),
                (body + 4, 4, "big", "dim"),
                (body + 8, 1, "big", "enum"),
                (body + 9, 1, "big", "enum"),
                (body + 12, 1, "big", "enum"),
            ]
        elif kind == b"acTL":
            out += [(body, 4, "big", "len"), (body + 4, 4, "big", "len")]
        elif kind == b"fcTL":
            out += [(body + 4 + 4 * i, 4, "big", "dim") for i in range(4)] + [
                (body + 24, 1, "big", "enum"),
                (body + 25, 1, "big", "enum"),
            ]
        if kind == b"IEND":
            break
        pos += 12 + length
    return out


def _jpeg_fields(d: bytes) -> list[Field]:
    out, pos = [], 2
    while pos + 4 <= len(d) and d[pos] == 0xFF:
        marker = d[pos + 1]
        out.append((pos + 2, 2, "big", "len"))
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            out += [
                (pos + 4, 1, "big", "enum"),
                (pos + 5, 2, "big", "dim"),
                (pos + 7, 2, "big", "dim"),
                (pos + 9, 1, "big", "enum"),
            ]
            out += [(pos + 10 + 3 * i + 1, 1, "big", "enum") for i in range(min(d[pos + 9], 4))]  # sampling factors
        if marker == 0xDA:
            out.append((pos + 4, 1, "big", "enum"))
            break
        pos += 2 + int.from_bytes(d[pos + 2 : pos + 4], "big")
    return out


def _gif_fields(d: bytes) -> list[Field]:
    out = [(6, 2, "little", "dim"), (8, 2, "little", "dim"), (10, 1, "little", "enum")]
    pos = 13 + (3 << ((d[10] & 7) + 1) if d[10] & 0x80 else 0)

    def sub_blocks(p: int) -> int:
        while p < len(d):
            out.append((p, 1, "little", "len"))
            if d[p] == 0:
                return p + 1
            p += 1 + d[p]
        return p

    while pos < len(d):
        if d[pos] == 0x21:
            out.append((pos + 1, 1, "little", "enum"))
            pos = sub_blocks(pos + 2)
        elif d[pos] == 0x2C:
            out += [(pos + 1 + 2 * i, 2, "little", "dim") for i in range(4)] + [(pos + 9, 1, "little", "enum")]
            flags = d[pos + 9] if pos + 9 < len(d) else 0
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            out.append((pos, 1, "little", "enum"))  # LZW minimum code size
            pos = sub_blocks(pos + 1)
        else:
            break
    return out


def _webp_fields(d: bytes) -> list[Field]:
    out, pos = [(4, 4, "little", "len")], 12
    while pos + 8 <= len(d):
        kind, size = d[pos : pos + 4], int.from_bytes(d[pos + 4 : pos + 8], "little")
        out.append((pos + 4, 4, "little", "len"))
        body = pos + 8
        if kind == b"VP8X":
            out += [(body, 1, "little", "enum"), (body + 4, 3, "little", "dim"), (body + 7, 3, "little", "dim")]
        elif kind == b"ANMF":
            out += [(body + 3 * i, 3, "little", "dim") for i in range(4)] + [(body + 15, 1, "little", "enum")]
            pos = body + 16  # frame data chunks are nested inside
            continue
        elif kind == b"VP8 ":
            out += [(body + 6, 2, "little", "dim"), (body + 8, 2, "little", "dim")]
        elif kind == b"VP8L":
            out += [(body, 1, "little", "enum"), (body + 1, 4, "little", "dim")]
        pos = body + size + (size & 1)
    return out


def _bmp_fields(d: bytes) -> list[Field]:
    return [
        (2, 4, "little", "len"),
        (10, 4, "little", "len"),
        (14, 4, "little", "enum"),
        (18, 4, "little", "dim"),
        (22, 4, "little", "dim"),
        (26, 2, "little", "enum"),
        (28, 2, "little", "enum"),
        (30, 4, "little", "enum"),
        (34, 4, "little", "len"),
        (46, 4, "little", "len"),
    ]


_TIFF_TAG_KIND = {
    256: "dim",
    257: "dim",
    273: "len",
    278: "len",
    279: "len",
    258: "enum",
    259: "enum",
    262: "enum",
    277: "enum",
    284: "enum",
    317: "enum",
    338: "enum",
    339: "enum",
    320: "len",
}


def _tiff_fields(d: bytes) -> list[Field]:
    order = "little" if d[:2] == b"II" else "big"
    out = [(4, 4, order, "len")]
    ifd, seen = int.from_bytes(d[4:8], order), set()
    while 8 <= ifd < len(d) - 2 and ifd not in seen and len(seen) < 4:
        seen.add(ifd)
        count = int.from_bytes(d[ifd : ifd + 2], order)
        out.append((ifd, 2, order, "len"))
        for i in range(count):
            e = ifd + 2 + 12 * i
            if e + 12 > len(d):
                break
            tag, typ = int.from_bytes(d[e : e + 2], order), int.from_bytes(d[e + 2 : e + 4], order)
            out += [(e + 2, 2, order, "enum"), (e + 4, 4, order, "len")]
            kind = _TIFF_TAG_KIND.get(tag)
            if kind:
                out.append((e + 8, 2 if typ == 3 else 4, order, kind))
        nxt = ifd + 2 + 12 * count
        out.append((nxt, 4, order, "len"))
        ifd = int.from_bytes(d[nxt : nxt + 4], order)
    return out


_FIELDS = {
    "png": _png_fields,
    "jpeg": _jpeg_fields,
    "gif": _gif_fields,
    "webp": _webp_fields,
    "bmp": _bmp_fields,
    "tiff": _tiff_fields,
}
SEED_FIELDS = {name: [f for f in _FIELDS[fmt](data) if f[0] + f[1] <= len(data)] for name, (fmt, data) in SEEDS.items()}

_INTERESTING = [
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    127,
    128,
    255,
    256,
    257,
    4095,
    8191,
    16383,
    16384,
    32767,
    32768,
    50_000,
    50_001,
    65_535,
    65_536,
    1 << 23,
    (1 << 24) - 1,
    2**31 - 1,
    2**31,
    2**32 - 1,
]


def _fix_png_crcs(d: bytearray) -> None:
    pos = 8
    while pos + 12 <= len(d):
        length = int.from_bytes(d[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(d):
            return
        d[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(d[pos + 4 : end])) & 0xFFFFFFFF)
        pos = end + 4


# ---------------------------------------------------------------- strategies


@st.composite
def field_patches(draw, name: str) -> bytes:
    """A seed with some of its header fields rewritten (dimensions huge or zero, lengths wrong, bad enums)."""
    fmt, data = SEEDS[name]
    d = bytearray(data)
    fields = SEED_FIELDS[name]
    for _ in range(draw(st.integers(1, 3))):
        offset, size, order, kind = draw(st.sampled_from(fields))
        top = (1 << (8 * size)) - 1
        old = int.from_bytes(d[offset : offset + size], order)
        value = draw(
            st.one_of(
                st.sampled_from(_INTERESTING),
                st.integers(0, top),
                st.integers(-16, 16).map(lambda delta: old + delta),
                st.integers(2, 5000).map(lambda k: old * k),
            )
        )
        d[offset : offset + size] = (value & top).to_bytes(size, order)
    if fmt == "png" and draw(st.booleans()):
        _fix_png_crcs(d)  # get past the CRC check to the code that uses the field
    return bytes(d)


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """Generic damage: flips, overwrites, inserted/deleted/repeated runs, truncation."""
    d = bytearray(data)
    # Hypothesis favours small integers; mostly spare the first bytes so the damage reaches the decoders
    spare = draw(st.sampled_from([0, 16, 16, 16]))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "repeat", "truncate"]))
        n = len(d)
        i = draw(st.integers(min(spare, max(n - 1, 0)), max(n - 1, 0)))
        if op == "flip" and n:
            d[i] ^= draw(st.integers(1, 255))
        elif op == "set" and n:
            d[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif op == "insert":
            run = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=64),
                    st.builds(lambda b, k: b * k, st.binary(min_size=1, max_size=4), st.integers(1, 512)),
                )
            )
            d[i:i] = run
        elif op == "delete" and n:
            j = draw(st.integers(i, min(n, i + 64)))
            del d[i:j]
        elif op == "repeat" and n:
            j = draw(st.integers(i, min(n, i + 64)))
            d[j:j] = d[i:j] * draw(st.integers(1, 20))
        elif op == "truncate":
            del d[i:]
    return bytes(d)


seed_names = st.sampled_from(SEED_NAMES)
pristine = seed_names.map(lambda name: SEEDS[name][1])
patched = seed_names.flatmap(field_patches)
damaged = st.one_of(pristine, patched).flatmap(byte_mutations)

_ALLOWED_MAGIC = [
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\xff\xd8\xff\xc0",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\xff\xff\xff\xffWEBPVP8L",
    b"RIFF\x20\x00\x00\x00WEBPVP8X",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
]
# refused formats: these prefixes must give UNSUPPORTED_FORMAT whatever follows
_REFUSED_PREFIXES = [
    b"<svg",
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1e9" height="1e9">',
    b'\xef\xbb\xbf <?xml version="1.0" encoding="UTF-8"?>\n<svg',
    b"  \n<!-- comment --><svg ",
    b"<!DOCTYPE html>",
    b"<html><body><img src=x onerror=alert(1)>",
    b"<script>",
    b"<",
    b"%PDF-1.7\n",
    b"%PDF-",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
    b"\xc5\xd0\xd3\xc6",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x1f\x8b\x08",
    b"BZh9",
    b"\xfd7zXZ\x00",
    b"Rar!\x1a\x07\x00",
    b"\x00\x00\x01\x00",
    b"8BPS",
    b"\xff\x4f\xff\x51",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"qoif",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x1cftypavif",
    b"\x00\x00\x00\x18ftypisom",
    b"RIFF\x00\x00\x00\x00AVI ",
    b"SQLite format 3\x00",
    b"\x7fELF",
    b"MZ",
    b"OggS",
]
magic_prefixed = st.builds(
    lambda m, tail: m + tail, st.sampled_from(_ALLOWED_MAGIC + _REFUSED_PREFIXES), st.binary(max_size=2048)
)
limits_st = st.sampled_from(ALL_LIMITS)
drafts_st = st.sampled_from(DRAFTS)


# ---------------------------------------------------------------- the property


def event(text: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (a no-op outside a Hypothesis test)."""
    from hypothesis.control import _current_build_context

    if _current_build_context.value is not None:
        _event(text)


def check(data: bytes, limits: DecodeLimits, draft) -> Image.Image | None:
    """decode_image's contract; returns the image, or None after a proper ImageError."""
    try:
        im = decode_image(data, limits, draft)
    except ImageError as e:
        event(f"refused: {getattr(e.code, 'value', e.code)}")  # shown by --hypothesis-show-statistics
        assert isinstance(e.code, ErrorCode) and e.code in DECODE_CODES, e.code
        assert isinstance(e.message, str) and e.message.strip() and str(e) == e.message
        # the cheap checks come first and are exact
        if not data:
            assert e.code == ErrorCode.EMPTY
        elif len(data) > limits.max_bytes:
            assert e.code == ErrorCode.TOO_LARGE
        elif sniff(data).name not in limits.formats:
            assert e.code == ErrorCode.UNSUPPORTED_FORMAT
        else:
            assert e.code not in (ErrorCode.EMPTY, ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_FORMAT), e.code
        return None
    # accepted: it passed every gate and is a sane RGB picture within the limits
    event(f"decoded: {sniff(data).name}")
    assert 0 < len(data) <= limits.max_bytes
    assert sniff(data).name in limits.formats
    assert isinstance(im, Image.Image) and im.mode == "RGB"
    w, h = im.size
    assert 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE
    assert w * h <= limits.max_pixels
    pixels = np.asarray(im)
    assert pixels.shape == (h, w, 3) and pixels.dtype == np.uint8
    # …and becomes model input of the shape the model expects
    for rule in PREPROCESSORS:
        out = rule.prepare(im)
        if isinstance(rule, NaFlex):
            nh, nw = out["shape"]
            assert 1 <= nh * nw <= rule.max_num_patches and out["patches"].shape == (nh * nw, 4 * 4 * 3)
        else:
            side = 32 if rule.crop is None else 24
            assert out["pixels"].shape == (side, side, 3) and out["pixels"].dtype == np.uint8
    return im


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seeds_decode_with_default_limits(name):
    """The unmutated seeds are valid: they decode (TIFF once enabled) to their true size."""
    fmt, data = SEEDS[name]
    expected = Image.open(io.BytesIO(data)).size
    if fmt == "jpeg" and name == "jpeg-progressive-exif":
        expected = expected[::-1]  # orientation 6: rotated
    im = check(data, WITH_TIFF, None)
    assert im is not None and im.size == expected
    if fmt == "tiff":
        with pytest.raises(ImageError) as info:
            decode_image(data, DEFAULT)
        assert info.value.code == ErrorCode.UNSUPPORTED_FORMAT
    # every seed has fields for the mutator to rewrite, including its dimensions
    assert any(kind == "dim" for _, _, _, kind in SEED_FIELDS[name]), name


@examples(1000)
@given(data=st.binary(max_size=4096), limits=limits_st, draft=drafts_st)
def test_arbitrary_bytes(data, limits, draft):
    check(data, limits, draft)


@examples(1000)
@given(data=magic_prefixed, limits=limits_st, draft=drafts_st)
def test_magic_bytes_then_anything(data, limits, draft):
    check(data, limits, draft)


@examples(600)
@given(
    prefix=st.sampled_from(_REFUSED_PREFIXES),
    tail=st.one_of(st.binary(max_size=512), pristine, damaged),
    limits=limits_st,
)
def test_refused_formats_are_refused_whatever_follows(prefix, tail, limits):
    """SVG, HTML, PDF, ZIP, … — even with a valid image behind the magic — never reach Pillow."""
    data = prefix + tail
    with pytest.raises(ImageError) as info:
        decode_image(data, limits, (224, 224))
    expected = ErrorCode.TOO_LARGE if len(data) > limits.max_bytes else ErrorCode.UNSUPPORTED_FORMAT
    assert info.value.code == expected


@examples(5000)
@given(data=patched, limits=limits_st, draft=drafts_st)
@pytest.mark.slow
def test_header_fields_patched(data, limits, draft):
    check(data, limits, draft)


@examples(5000)
@given(data=damaged, limits=limits_st, draft=drafts_st)
@pytest.mark.slow
def test_mutated_images(data, limits, draft):
    check(data, limits, draft)


@examples(1000)
@given(name=seed_names, cut=st.floats(0.0, 1.0, exclude_max=True), limits=limits_st)
def test_truncated_images(name, cut, limits):
    """A seed cut anywhere: refused with a code, or (only trailing bytes, or later frames, lost) still decoded."""
    data = SEEDS[name][1]
    data = data[: int(len(data) * cut)]
    check(data, limits, None)
