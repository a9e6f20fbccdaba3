import pytest

from wakeru.labels import (
    LabelError,
    custom_emoji_id,
    label_emoji,
    label_name,
    normalise_labels,
    parse_labels,
    split_emoji,
    tag_key,
)

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


# ---------------------------------------------------------------- label=emoji

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧, a ZWJ sequence
KEYCAP_1 = "1\ufe0f\u20e3"  # 1️⃣
FLAG_JP = "\U0001f1ef\U0001f1f5"  # 🇯🇵


@pytest.mark.parametrize(
    "raw, stored, name, mark",
    [
        ("犬=🐕", "犬=🐕", "犬", "🐕"),
        ("  犬  =  🐕 ", "犬=🐕", "犬", "🐕"),  # no spaces around "=" once stored
        ("red  car = 🚗", "red car=🚗", "red car", "🚗"),
        (f"家族={FAMILY}", f"家族={FAMILY}", "家族", FAMILY),
        (f"一={KEYCAP_1}", f"一={KEYCAP_1}", "一", KEYCAP_1),
        ("一=1\u20e3", "一=1\u20e3", "一", "1\u20e3"),  # the keycap without U+FE0F
        (f"日本={FLAG_JP}", f"日本={FLAG_JP}", "日本", FLAG_JP),
        (
            "エー=\U0001f1e6",
            "エー=\U0001f1e6",
            "エー",
            "\U0001f1e6",
        ),  # a lone regional indicator (🇦): Discord reacts with it
        ("いいね=👍🏽", "いいね=👍🏽", "いいね", "👍🏽"),  # skin tone
        ("心=❤", "心=❤", "心", "❤"),
        ("心=❤\ufe0f", "心=❤\ufe0f", "心", "❤\ufe0f"),
        ("犬=🐕\ufe0f", "犬=🐕\ufe0f", "犬", "🐕\ufe0f"),  # a needless U+FE0F is still the same emoji
        ("猫=<:neko:1234>", "猫=<:neko:1234>", "猫", "<:neko:1234>"),
        (
            "猫 = <a:neko_run2:987654321098765432>",
            "猫=<a:neko_run2:987654321098765432>",
            "猫",
            "<a:neko_run2:987654321098765432>",
        ),
        ("E=mc2=🧪", "E=mc2=🧪", "E=mc2", "🧪"),  # split at the last "="
    ],
)
def test_label_with_emoji_is_stored_as_name_equals_emoji(raw, stored, name, mark):
    assert parse_labels(raw, **LIMITS) == (stored,)
    assert split_emoji(stored) == (name, mark)
    assert label_name(stored) == name and label_emoji(stored) == mark
    assert normalise_labels([stored], **LIMITS) == (stored,)  # already normal


@pytest.mark.parametrize(
    "raw, code, params",
    [
        ("=🐕", "emoji_without_name", {"label": "=🐕"}),
        (" = 🐕", "emoji_without_name", {"label": "= 🐕"}),
        ("=", "emoji_without_name", {"label": "="}),
        ("犬=", "bad_emoji", {"label": "犬=", "emoji": ""}),
        ("犬 = ", "bad_emoji", {"label": "犬 =", "emoji": ""}),
        ("犬=inu", "bad_emoji", {"label": "犬=inu", "emoji": "inu"}),
        ("犬=1", "bad_emoji", {"label": "犬=1", "emoji": "1"}),
        ("犬=🐕🐈", "bad_emoji", {"label": "犬=🐕🐈", "emoji": "🐕🐈"}),  # two emoji
        ("犬=🐕 🐈", "bad_emoji", {"label": "犬=🐕 🐈", "emoji": "🐕 🐈"}),
        ("犬=\ufe0f", "bad_emoji", {"label": "犬=\ufe0f", "emoji": "\ufe0f"}),
        ("猫=<:n:1>", "bad_emoji", {"label": "猫=<:n:1>", "emoji": "<:n:1>"}),  # custom name under 2 characters
        ("猫=<:neko:>", "bad_emoji", {"label": "猫=<:neko:>", "emoji": "<:neko:>"}),
        ("猫=<:ne-ko:12>", "bad_emoji", {"label": "猫=<:ne-ko:12>", "emoji": "<:ne-ko:12>"}),
        ("猫=<b:neko:12>", "bad_emoji", {"label": "猫=<b:neko:12>", "emoji": "<b:neko:12>"}),
        ("猫=<:neko:１２>", "bad_emoji", {"label": "猫=<:neko:１２>", "emoji": "<:neko:１２>"}),  # full-width digits
        (f"猫=<:{'n' * 33}:12>", "bad_emoji", {"label": f"猫=<:{'n' * 33}:12>", "emoji": f"<:{'n' * 33}:12>"}),
        ("E=mc2", "bad_emoji", {"label": "E=mc2", "emoji": "mc2"}),
    ],
)
def test_bad_emoji_forms_are_refused_with_their_code(raw, code, params):
    with pytest.raises(LabelError) as info:
        normalise_labels(["犬", raw], **LIMITS)
    assert (info.value.code, info.value.params) == (code, params)
    assert str(info.value)  # an English message for callers without a translation


def test_limit_applies_to_the_name_only():
    name = "あ" * 10
    assert parse_labels(f"{name}=👨\u200d👩\u200d👧", **LIMITS) == (f"{name}=👨\u200d👩\u200d👧",)
    assert parse_labels(f"{name}=<a:{'x' * 32}:123456789012345678>", **LIMITS)
    with pytest.raises(LabelError) as info:
        parse_labels(f"{name}い=🐕", **LIMITS)
    assert info.value.code == "too_long"
    assert info.value.params == {"label": name + "い", "length": 11, "limit": 10}


def test_duplicates_are_found_by_name_first_occurrence_wins():
    assert parse_labels("犬, 犬=🐕", **LIMITS) == ("犬",)
    assert parse_labels("犬=🐕, 犬, 犬=🐶, 猫", **LIMITS) == ("犬=🐕", "猫")
    assert parse_labels("か\u3099=🐕, が", **LIMITS) == ("が=🐕",)  # the name is NFC-normalised too
    with pytest.raises(LabelError) as info:
        parse_labels("犬, 犬=🐕", **LIMITS, min_count=2)
    assert (info.value.code, info.value.params["count"]) == ("too_few", 1)
    with pytest.raises(LabelError) as info:
        parse_labels("a=🐕, b=🐕, c, d, e, f=🐕, a", **LIMITS)  # 6 names
    assert (info.value.code, info.value.params["count"]) == ("too_many", 6)


def test_control_and_invisible_characters_rules_still_apply_with_emoji():
    assert parse_labels("犬\u200b=🐕, 犬=🐶", **LIMITS) == ("犬=🐕",)
    with pytest.raises(LabelError) as info:
        parse_labels("犬\x00=🐕", **LIMITS)
    assert info.value.code == "control_chars"


def test_split_emoji_never_raises_and_leaves_plain_labels_whole():
    for label in ("犬", "E=mc2", "=🐕", "犬=", "a=b", "", "="):
        assert split_emoji(label) == (label, None)
        assert label_name(label) == label and label_emoji(label) is None


def test_custom_emoji_id():
    assert custom_emoji_id("<:neko:1234>") == 1234
    assert custom_emoji_id("<a:neko:987654321098765432>") == 987654321098765432
    assert custom_emoji_id("🐕") is None
    assert custom_emoji_id("<:n:1>") is None
    assert custom_emoji_id("neko:1234") is None
    assert custom_emoji_id(label_emoji("猫=<:neko:42>") or "") == 42


@pytest.mark.parametrize(
    "a, b",
    [
        ("ＣＡＴ", "cat"),
        (" Cat ", "cat"),
        ("Big   Cat", "big cat"),
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana
        ("ｶﾞｯﾂ", "ガッツ"),  # half-width dakuten composes
        ("犬\u3000 ネコ", "犬 ネコ"),  # ideographic space collapses
        ("Straße", "STRASSE"),
        ("か\u3099", "が"),
        ("ﬁsh", "fish"),
        ("\u200b猫", "猫"),
    ],
)
def test_tag_key_matches_spellings_of_the_same_name(a, b):
    assert tag_key(a) == tag_key(b)


def test_tag_key_keeps_different_names_apart():
    assert tag_key("cat") != tag_key("cats")
    assert tag_key("カタカナ") != tag_key("かたかな")  # hiragana and katakana are different names
    assert tag_key(" Big  Cat ") == "big cat"


def test_without_emoji_an_equals_sign_is_plain_text():
    """Search queries are words: "E=mc2" there is no label=emoji, and its length counts whole."""
    assert normalise_labels(["E = mc2 の図"], max_count=1, max_length=20, emoji=False) == ("E = mc2 の図",)
    with pytest.raises(LabelError) as caught:
        normalise_labels(["E = mc2 の図"], max_count=1, max_length=20)
    assert caught.value.code == "bad_emoji"
    with pytest.raises(LabelError) as caught:
        normalise_labels(["犬=🐕"], max_count=1, max_length=2, emoji=False)
    assert caught.value.code == "too_long"
