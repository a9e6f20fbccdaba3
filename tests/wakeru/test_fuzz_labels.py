"""Property-based fuzzing of label parsing and normalisation (wakeru.labels).

The property, for any text (or list of items) and any limits: parse_labels / normalise_labels either return labels
that satisfy every rule — count within [min_count, max_count], each non-empty, trimmed, a name of at most max_length
(a label's "=emoji" suffix, when it has one, is one emoji and does not count), free of control characters and
separators, no two with the same name, first occurrences in input order, normalising again changes nothing — or raise
LabelError whose `code` is one of the documented codes and agrees with the input. Nothing else.

Derandomized and time-bounded for CI, and nothing is written into the repository; WAKERU_FUZZ_EXAMPLES=N runs N
examples per test, WAKERU_FUZZ_RANDOM=1 draws new ones each run.
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import timedelta

import emoji
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from wakeru.labels import LabelError, label_emoji, label_name, normalise_labels, parse_labels, split_emoji, split_labels

_EXAMPLES = int(os.environ.get("WAKERU_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "wakeru-fuzz-labels",
    derandomize=not os.environ.get("WAKERU_FUZZ_RANDOM"),
    database=None,
    deadline=timedelta(seconds=2),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("wakeru-fuzz-labels")


def examples(default: int) -> settings:
    return settings(FUZZ, max_examples=_EXAMPLES or default)


pytestmark = pytest.mark.timeout(120)

# The codes LabelError documents (its docstring); "invalid", the constructor's default, must never escape.
DOCUMENTED_CODES = {
    "control_chars",
    "too_long",
    "empty",
    "too_few",
    "too_many",
    "not_text",
    "emoji_without_name",
    "bad_emoji",
}
SEPARATORS = re.compile(r"[,、，\r\n]")

# Pieces that exercise every rule: separators, whitespace of every kind, control and format characters, Discord
# mentions and markdown, scripts that normalise differently, and long runs.
PIECES = [
    ",",
    "、",
    "，",
    ",,",
    " , ",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    " ",
    "  ",
    "\t",
    "\u3000",
    "\xa0",
    "\u2003",
    "\v",
    "\f",
    "\x00",
    "\x07",
    "\x1b",
    "\x1c",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",  # Cc, some of which split() eats
    "\u2028",
    "\u2029",  # line/paragraph separators (Zl/Zp)
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",  # zero-width / format (Cf)
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\u061c",  # bidi marks and overrides
    "@everyone",
    "@here",
    "<@123456789012345678>",
    "<@!42>",
    "<@&123>",
    "<#987>",
    "<:emoji:123>",
    # label=emoji: valid and invalid emoji after the last "=", and names around it
    "=",
    "==",
    " = ",
    "=\U0001f415",
    "= \U0001f415 ",
    "=\u2764",
    "=\u2764\ufe0f",
    "=1\ufe0f\u20e3",
    "=\U0001f1ef\U0001f1f5",
    "=\U0001f44d\U0001f3fd",
    "=\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "=<:neko:1234>",
    "=<a:neko_2:99>",
    "=<:n:1>",
    "=\U0001f415\U0001f408",
    "=x",
    "=1",
    "犬=\U0001f415",
    "犬 = \U0001f436",
    "<t:0:R>",
    "**bold**",
    "__u__",
    "*i*",
    "`code`",
    "```block```",
    "||spoiler||",
    "> quote",
    "# heading",
    "[x](http://e.x)",
    "\\",
    "\\,",
    '"',
    "'",
    "{}",
    "%s",
    "$(rm -rf /)",
    "<script>",
    "犬",
    "猫",
    "象",
    "鳥",
    "ｶﾀｶﾅ",
    "カタカナ",
    "Ａ",
    "A",
    "a",
    "é",
    "e\u0301",
    "が",
    "か\u3099",
    "ß",
    "İ",
    "ﬁ",
    "\U0001f436",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1ef\U0001f1f5",
    "\ufe0f",
    "\u0300",
    "a" * 50,
    "犬" * 51,
    "x" * 200,
    "あ" * 1000,
]

pieces_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=40).map("".join)
repeated_text = st.builds(
    lambda piece, k, sep: sep.join([piece] * k),
    st.sampled_from(PIECES + ["犬", "cat"]),
    st.integers(1, 400),
    st.sampled_from([",", "、", "\n", "", " "]),
)
many_labels = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6), max_size=150
).map(lambda xs: ",".join(xs))
clean_label = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=12)
# mostly valid label sets: they reach the count rules
clean_labels = st.lists(clean_label, max_size=150).map(lambda xs: "、".join(xs))
# valid labels with one odd piece somewhere: each special character meets the rules on its own
one_odd = st.builds(
    lambda labels, piece, at: (lambda t: t[: at % (len(t) + 1)] + piece + t[at % (len(t) + 1) :])(",".join(labels)),
    st.lists(clean_label, max_size=8),
    st.sampled_from(PIECES),
    st.integers(0, 200),
)
any_text = st.one_of(
    st.text(max_size=300),
    pieces_text,
    repeated_text,
    many_labels,
    clean_labels,
    one_odd,
    one_odd,
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=200),
)


@st.composite
def limits(draw) -> dict[str, int]:
    max_count = draw(st.one_of(st.integers(1, 5), st.integers(1, 150), st.just(100)))
    max_length = draw(st.one_of(st.integers(1, 5), st.integers(1, 120), st.just(50)))
    min_count = draw(st.integers(0, min(max_count, 3)))
    return dict(max_count=max_count, max_length=max_length, min_count=min_count)


def _collapse(raw: str) -> str:
    """The documented normalisation, written out independently: NFC, invisible format characters
    dropped (except the zero-width joiner and tag characters of emoji), whitespace collapsed."""
    kept = (ch for ch in raw if unicodedata.category(ch) != "Cf" or ch == "\u200d" or 0xE0020 <= ord(ch) <= 0xE007F)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split())


def _split(label: str) -> tuple[str, str | None]:
    """A collapsed label → (name, text after the last "=", or None without "="), independently of wakeru.labels."""
    if "=" not in label:
        return label, None
    name, mark = label.rsplit("=", 1)
    return name.strip(), mark.strip()


def _one_emoji(text: str) -> bool:
    if re.fullmatch(r"<a?:[A-Za-z0-9_]{2,32}:[0-9]+>", text):
        return True
    return emoji.is_emoji(text) or emoji.is_emoji(text.replace("\ufe0f", ""))


def _canonical(label: str) -> str:
    name, mark = _split(label)
    return name if mark is None else f"{name}={mark}"


def _refused(raw: object, lim: dict[str, int]) -> bool:
    """Whether this one item is refused on its own (whatever the others are)."""
    if not isinstance(raw, str):
        return True
    c = _collapse(raw)
    if not c:
        return False
    name, mark = _split(c)
    return _has_control(c) or (mark is not None and (not name or not _one_emoji(mark))) or len(name) > lim["max_length"]


def _has_control(s: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in s)


def check(items: list, lim: dict[str, int], result_or_error) -> None:
    """The contract of normalise_labels(items, **lim), given what it returned or raised."""
    if isinstance(result_or_error, LabelError):
        e = result_or_error
        event(f"LabelError {e.code}")  # outcome counts: --hypothesis-show-statistics
        assert e.code in DOCUMENTED_CODES, (e.code, str(e))
        assert str(e).strip()
        p = e.params
        if e.code == "not_text":
            assert any(not isinstance(x, str) for x in items) and p["type"] != "str"
        elif e.code == "control_chars":
            assert _has_control(p["label"]) and p["label"] in {_collapse(x) for x in items if isinstance(x, str)}
        elif e.code == "too_long":  # the name is what is too long, whatever its emoji
            assert p["length"] == len(p["label"]) > p["limit"] == lim["max_length"]
            assert p["label"] in {_split(_collapse(x))[0] for x in items if isinstance(x, str)}
        elif e.code == "emoji_without_name":
            assert p["label"] in {_collapse(x) for x in items if isinstance(x, str)}
            assert _split(p["label"])[0] == ""
        elif e.code == "bad_emoji":
            assert p["label"] in {_collapse(x) for x in items if isinstance(x, str)}
            assert _split(p["label"])[1] == p["emoji"] and not _one_emoji(p["emoji"])
        elif e.code == "empty":
            assert all(isinstance(x, str) and not _collapse(x) for x in items)
        elif e.code == "too_few":
            assert 0 < p["count"] < p["minimum"] == lim["min_count"]
            assert p["count"] == len({_split(_collapse(x))[0] for x in items} - {""})
        elif e.code == "too_many":
            assert p["count"] > p["limit"] == lim["max_count"] and p["excess"] == p["count"] - p["limit"]
            assert p["count"] == len({_split(_collapse(x))[0] for x in items} - {""})
        return
    out = result_or_error
    event("accepted")
    assert isinstance(out, tuple) and all(isinstance(label, str) for label in out)
    assert lim["min_count"] <= len(out) <= lim["max_count"]
    names = [label_name(label) for label in out]
    assert len(set(names)) == len(names), "duplicates"
    for label in out:
        assert label and label.strip() and label == _collapse(label), repr(label)  # non-empty and trimmed
        name, mark = split_emoji(label)
        assert (name, mark) == _split(label) and label == _canonical(label)  # no spaces around "="
        assert label_emoji(label) == mark and (mark is None or _one_emoji(mark))
        assert name and len(name) <= lim["max_length"]
        assert not _has_control(label), repr(label)
    # every given label is kept once (by name), first occurrences in input order; nothing is invented
    first: dict[str, str] = {}
    for c in map(_collapse, items):
        if c:
            first.setdefault(_split(c)[0], _canonical(c))
    assert out == tuple(first.values())
    # idempotent: the output is already normal
    assert normalise_labels(out, **lim) == out
    assert normalise_labels(list(out) + list(out), **lim) == out


def run(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except LabelError as e:  # anything else fails the test
        return e


@pytest.mark.slow
@examples(1500)
@given(text=any_text, lim=limits())
def test_parse_labels_either_valid_or_a_documented_error(text, lim):
    result = run(parse_labels, text, **lim)
    check(split_labels(text), lim, result)
    if isinstance(result, LabelError):
        assert result.code != "not_text"
        return
    for label in result:
        assert not SEPARATORS.search(label), repr(label)
    # the labels written back out with any separator parse to the same labels
    for sep in (",", "、", "，", "\n", " , ", "\r\n"):
        assert parse_labels(sep.join(result), **lim) == result


@examples(600)
@given(
    items=st.one_of(
        st.lists(st.one_of(any_text, st.sampled_from(PIECES)), max_size=120), st.lists(clean_label, max_size=150)
    ),
    lim=limits(),
)
def test_normalise_labels_either_valid_or_a_documented_error(items, lim):
    check(items, lim, run(normalise_labels, items, **lim))


@examples(300)
@given(
    items=st.lists(
        st.one_of(
            st.sampled_from(PIECES),
            st.integers(),
            st.none(),
            st.binary(max_size=4),
            st.lists(st.text(max_size=2), max_size=2),
            st.floats(allow_nan=True),
        ),
        min_size=1,
        max_size=10,
    ),
    lim=limits(),
)
def test_non_text_items_are_refused_with_not_text(items, lim):
    assume(any(not isinstance(x, str) for x in items))
    result = run(normalise_labels, items, **lim)
    check(items, lim, result)
    assert isinstance(result, LabelError)
    first_bad = next(i for i, x in enumerate(items) if not isinstance(x, str))
    before = items[:first_bad]
    if not any(_refused(x, lim) for x in before):
        assert result.code == "not_text"  # refused at the first non-text item, not later


@examples(400)
@given(parts=st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), min_size=1, max_size=30), lim=limits())
def test_order_of_separators_does_not_matter(parts, lim):
    """Any mix of the accepted separators splits the same way as plain commas."""
    parts = [SEPARATORS.sub("", p) for p in parts]
    seps = ["、", "，", "\n", "\r\n", ",,", "\r"]
    mixed = "".join(p + seps[i % len(seps)] for i, p in enumerate(parts))
    a, b = run(parse_labels, ",".join(parts), **lim), run(parse_labels, mixed, **lim)
    if isinstance(a, LabelError):
        assert isinstance(b, LabelError) and (a.code, a.params) == (b.code, b.params)
    else:
        assert a == b
