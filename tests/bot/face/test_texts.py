"""Every language under bot/face/locales has every text with English's fields; command localisations
are valid for Discord; a new language directory is picked up without code changes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import discord
import pytest
from babel.messages.pofile import read_po
from discord import app_commands

from bot.face import texts
from bot.face.texts import (
    CATALOGUES,
    COMMAND_CONTEXT,
    LOCALE_DIR,
    SOURCE_LANGUAGE,
    TEXTS,
    Catalogues,
    CommandTranslator,
    error_text,
    label_error,
    language,
    placeholders,
    text,
)
from wakeru.labels import LabelError, parse_labels
from wakeru.protocol import ErrorCode

try:  # Discord's own rule for chat-input command and option names (regex comes with transformers)
    import regex

    NAME = regex.compile(r"^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
except ImportError:  # pragma: no cover - the nearest the standard library gets
    NAME = re.compile(r"^[-_\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")

# every language there is, read from the directories (not from the loader), so a new one is checked
LANGUAGES = sorted(d.name for d in LOCALE_DIR.iterdir() if (d / "LC_MESSAGES" / "wakeru.po").is_file())
OTHERS = [lang for lang in LANGUAGES if lang != SOURCE_LANGUAGE]


def test_the_loader_finds_every_language():
    assert SOURCE_LANGUAGE in LANGUAGES and "ja" in LANGUAGES
    assert sorted(CATALOGUES.languages) == LANGUAGES


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_language_has_every_text_with_englishs_fields(lang):
    own = CATALOGUES.texts(lang)  # leaves out untranslated, fuzzy and broken entries
    assert not set(TEXTS) - set(own), f"{lang} lacks (or has untranslated / fuzzy / broken) texts"
    assert not set(own) - set(TEXTS), f"{lang} has keys English lacks"
    for key, english in TEXTS.items():
        assert own[key].strip(), (lang, key)
        assert placeholders(own[key]) == placeholders(english), (lang, key)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalogue_files_are_well_formed(lang):
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "wakeru.po"
    with path.open("rb") as f:
        catalog = read_po(f)
    assert catalog.locale_identifier is None or catalog.locale_identifier.lower() == lang.lower()
    assert all(message.context in (None, COMMAND_CONTEXT) for message in catalog), "unknown msgctxt"
    # texts with fields are marked python-brace-format for translators' tools (read from the file:
    # Babel drops the flag when the msgid, here a key, has no braces itself)
    for entry in path.read_text(encoding="utf-8").split("\n\n"):
        key = re.search(r'^msgid "(.+)"$', entry, re.M)
        if key is None or "msgctxt" in entry:
            continue
        flagged = bool(re.search(r"^#,.*\bpython-brace-format\b", entry, re.M))
        assert flagged == bool(placeholders(TEXTS.get(key[1], ""))), (lang, key[1])


def test_english_command_texts_are_the_source_text():
    assert all(message == name for message, name in CATALOGUES.commands(SOURCE_LANGUAGE).items())


def test_locale_picks_the_language():
    assert language(discord.Locale.japanese) == "ja" and language("ja") == "ja" and language("ja-JP") == "ja"
    assert language(discord.Locale.american_english) == "en" and language(discord.Locale.british_english) == "en"
    assert language(None) == "en" and language("") == "en"
    assert text(discord.Locale.japanese, "state.on") == "オン" and text("en-GB", "state.on") == "on"
    assert text(discord.Locale.japanese, "source.adhoc", count=3) == "コマンドで指定したラベル（3件）"
    if "fr" not in LANGUAGES:
        assert language(discord.Locale.french) == "en"  # no catalogue: English
        assert text(discord.Locale.french, "image_failed") == "Could not classify this image"


def test_every_error_code_has_its_own_text():
    for code in ErrorCode:
        assert f"error.{code.value}" in TEXTS, code
    assert error_text("ja", "no-such-code") == text("ja", "error.internal_error")
    assert error_text("en-US", ErrorCode.QUEUE_FULL) == TEXTS["error.queue_full"]


@pytest.mark.parametrize(
    "raw, fragment_ja",
    [
        ("", "ラベルがありません"),
        ("犬", "1個しかありません"),
        ("犬," + "あ" * 60, "60文字"),
        (",".join(str(i) for i in range(120)), "120個"),
    ],
)
def test_label_errors_are_specific_in_japanese(raw, fragment_ja):
    with pytest.raises(LabelError) as e:
        parse_labels(raw, max_count=100, max_length=50, min_count=2)
    assert fragment_ja in label_error("ja", e.value)
    assert label_error("en-US", e.value) != label_error("ja", e.value)


async def _payloads() -> list[dict]:
    """The command definitions as `python -m bot sync` sends them, translations included."""
    from bot.face.client import WakeruClient

    client = WakeruClient(None)
    await client.setup_hook()  # translator and cogs; no app, so nothing starts
    tree = client.tree
    commands = tree.get_commands() + tree.get_commands(type=discord.AppCommandType.message)
    return [await c.get_translated_payload(tree, tree.translator) for c in commands]


def _items(payloads):
    """(item, chat_input) for every command, subcommand and option."""

    def walk(item, chat_input):
        yield item, chat_input
        for option in item.get("options", []):
            yield from walk(option, chat_input)

    for payload in payloads:
        yield from walk(payload, payload.get("type", 1) == 1)


def _discord_locales(lang: str) -> list[str]:
    return [loc.value for loc in discord.Locale if CATALOGUES.language_for(loc) == lang]


async def test_every_command_text_is_in_the_english_catalogue():
    used = set()
    for item, _ in _items(await _payloads()):
        used.add(item["name"])
        if item.get("description"):
            used.add(item["description"])
        used.update(choice["name"] for choice in item.get("choices", []))
    english = set(CATALOGUES.commands(SOURCE_LANGUAGE))
    assert not used - english, 'command texts missing from en/LC_MESSAGES/wakeru.po (msgctxt "command")'
    assert not english - used, "command texts in en/LC_MESSAGES/wakeru.po that no command uses"


@pytest.mark.parametrize("lang", OTHERS)
async def test_command_localisations_are_complete_and_valid(lang):
    locales = _discord_locales(lang)
    if not locales:
        pytest.skip(f"no Discord locale maps to {lang}; Discord cannot show its command names")
    payloads = await _payloads()
    seen = 0
    for item, chat_input in _items(payloads):
        for loc in locales:
            name = item.get("name_localizations", {}).get(loc)
            assert name, f"no {lang} name for {item['name']}"
            assert 1 <= len(name) <= 32, name
            if chat_input:
                assert NAME.match(name) and name == name.lower(), name
            if item.get("description"):
                description = item.get("description_localizations", {}).get(loc)
                assert description and len(description) <= 100, (lang, item["name"])
            for choice in item.get("choices", []):
                choice_name = choice.get("name_localizations", {}).get(loc)
                assert choice_name and len(choice_name) <= 100, (lang, choice)
        seen += 1
    assert seen >= 50  # 6 commands, 17 subcommands and their options
    assert {p["name"] for p in payloads} == {
        "classify",
        "labels",
        "Classify image",
        "search",
        "index",
        "Find similar images",
    }


async def test_english_command_names_are_valid_and_japanese_as_before():
    payloads = await _payloads()
    for item, chat_input in _items(payloads):
        assert not item.get("name_localizations", {}).get("en-US")  # the names themselves are English
        if chat_input:
            assert NAME.match(item["name"]) and item["name"] == item["name"].lower(), item["name"]
        assert len(item.get("description", "")) <= 100, item["name"]
    menu = next(p for p in payloads if p["name"] == "Classify image")
    assert menu["name_localizations"]["ja"] == "画像を分類"
    similar = next(p for p in payloads if p["name"] == "Find similar images")
    assert similar["name_localizations"]["ja"] == "似た画像を探す"


# ---- a new language is a new directory -------------------------------------------------------

FRENCH = r"""# French (a test catalogue)
msgid ""
msgstr ""
"Language: fr\n"
"Content-Type: text/plain; charset=UTF-8\n"

msgid "state.on"
msgstr "activée"

#, python-brace-format
msgid "source.adhoc"
msgstr "étiquettes données avec la commande ({count})"

#, python-brace-format
msgid "more"
msgstr "et {nombre} de plus"

#, fuzzy
msgid "state.off"
msgstr "désactivée"

msgid "image_failed"
msgstr ""

msgctxt "command"
msgid "classify"
msgstr "classer"
"""


def _locales_with(tmp_path: Path, extra: dict[str, str]) -> Path:
    directory = tmp_path / "locales"
    shutil.copytree(LOCALE_DIR, directory)
    for lang, po in extra.items():
        (directory / lang / "LC_MESSAGES").mkdir(parents=True)
        (directory / lang / "LC_MESSAGES" / "wakeru.po").write_text(po, encoding="utf-8")
    return directory


async def test_a_new_language_directory_is_used_without_code_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(texts, "CATALOGUES", Catalogues(_locales_with(tmp_path, {"fr": FRENCH})))
    assert "fr" in texts.CATALOGUES.languages
    assert language(discord.Locale.french) == "fr" and language("fr-CA") == "fr"
    assert text(discord.Locale.french, "state.on") == "activée"
    assert text("fr", "source.adhoc", count=2) == "étiquettes données avec la commande (2)"
    # what fr lacks, leaves untranslated or marks fuzzy, or gets wrong ({nombre}), is English
    assert text("fr", "more", count=2) == "and 2 more"
    assert text("fr", "state.off") == "off" and text("fr", "image_failed") == "Could not classify this image"
    assert text("fr", "show.title", where="#x") == "Labels for #x"
    assert text("ja", "state.on") == "オン" and text("en-US", "state.on") == "on"  # the others as before
    translator = CommandTranslator()
    assert await translator.translate(app_commands.locale_str("classify"), discord.Locale.french, None) == "classer"
    assert await translator.translate(app_commands.locale_str("labels"), discord.Locale.french, None) is None
    assert await translator.translate(app_commands.locale_str("classify"), discord.Locale.japanese, None) == "分類"
    assert (
        await translator.translate(app_commands.locale_str("classify"), discord.Locale.american_english, None) is None
    )


def test_discord_locales_find_the_nearest_catalogue(tmp_path):
    empty = '"Content-Type: text/plain; charset=UTF-8\\n"\n'
    header = f'msgid ""\nmsgstr ""\n{empty}\n'
    catalogues = Catalogues(_locales_with(tmp_path, {"es": header, "pt_BR": header, "zh_TW": header}))
    assert catalogues.language_for(discord.Locale.spain_spanish) == "es"
    assert catalogues.language_for(discord.Locale.latin_american_spanish) == "es"
    assert catalogues.language_for(discord.Locale.brazil_portuguese) == "pt_BR"
    assert catalogues.language_for("pt-PT") == "pt_BR"  # another region of the language beats English
    assert catalogues.language_for(discord.Locale.taiwan_chinese) == "zh_TW"
    assert catalogues.language_for(discord.Locale.german) == "en"
    assert catalogues.text("es", "state.on") == "on"  # an empty catalogue is all English


def test_english_is_required(tmp_path):
    (tmp_path / "ja" / "LC_MESSAGES").mkdir(parents=True)
    shutil.copy(LOCALE_DIR / "ja" / "LC_MESSAGES" / "wakeru.po", tmp_path / "ja" / "LC_MESSAGES")
    with pytest.raises(RuntimeError, match="no English texts"):
        Catalogues(tmp_path)
