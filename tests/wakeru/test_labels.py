import pytest

from wakeru.labels import LabelError, normalise_labels, parse_labels

LIMITS = dict(max_count=5, max_length=10)


def test_separators_trim_and_dedupe_keep_order():
    text = " 犬 , 猫、象，犬\n 鳥 \r\n猫"
    assert parse_labels(text, **LIMITS) == ("犬", "猫", "象", "鳥")


def test_inner_whitespace_collapsed_and_empty_parts_skipped():
    assert parse_labels("red  car,,\t,blue\tsky", **LIMITS) == ("red car", "blue sky")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no labels given"),
        (" , 、\n", "no labels given"),
        ("犬,あいうえおかきくけこさ", r"is 11 characters long; the limit is 10"),
        ("a,b,c,d,e,f", r"6 labels given; the limit is 5: remove 1"),
        ("a\x00b", "control characters"),
    ],
)
def test_violations_say_what_to_fix(text, message):
    with pytest.raises(LabelError, match=message):
        parse_labels(text, **LIMITS)


def test_minimum_count():
    with pytest.raises(LabelError, match="give at least 2"):
        parse_labels("犬,犬", **LIMITS, min_count=2)


def test_non_text_label_refused():
    with pytest.raises(LabelError, match="must be text"):
        normalise_labels(["犬", 3], **LIMITS)


def test_labels_that_look_the_same_are_the_same_label():
    # NFC: が typed as か + combining dakuten; invisible characters dropped, emoji joiners kept
    labels = parse_labels(
        "\u200b,犬, か\u3099, が, か\u200b\u3099, 犬\u200b, \u202e逆, 👨\u200d👩\u200d👧", max_count=10, max_length=10
    )
    assert labels == ("犬", "が", "逆", "👨\u200d👩\u200d👧")
