"""Every text exists in both languages with the same fields; command localisations are valid for Discord."""

from __future__ import annotations

import re
import string

import discord
import pytest
from discord import app_commands

from bot.face.cogs import add_commands
from bot.face.texts import JAPANESE_COMMANDS, TEXTS, CommandTranslator, error_text, label_error, language, text
from wakeru.labels import LabelError, parse_labels
from wakeru.protocol import ErrorCode

# Discord's rule for chat-input command and option names
NAME = re.compile(r"^[-_\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("key", sorted(TEXTS))
def test_both_languages_take_the_same_fields(key):
    en, ja = TEXTS[key]
    assert en and ja and _fields(en) == _fields(ja)


def test_locale_picks_the_language():
    assert language(discord.Locale.japanese) == 1 and language("ja") == 1
    assert language(discord.Locale.american_english) == 0 and language(None) == 0
    assert text(discord.Locale.japanese, "state.on") == "オン"


def test_every_error_code_has_its_own_text():
    for code in ErrorCode:
        assert f"error.{code.value}" in TEXTS, code
    assert error_text("ja", "no-such-code") == TEXTS["error.internal_error"][1]


@pytest.mark.parametrize("raw, fragment_ja", [
    ("", "ラベルがありません"), ("犬", "1個しかありません"), ("犬," + "あ" * 60, "60文字"),
    (",".join(str(i) for i in range(120)), "120個"),
])
def test_label_errors_are_specific_in_japanese(raw, fragment_ja):
    with pytest.raises(LabelError) as e:
        parse_labels(raw, max_count=100, max_length=50, min_count=2)
    assert fragment_ja in label_error("ja", e.value)
    assert label_error("en-US", e.value) != label_error("ja", e.value)


def _walk(commands):
    for command in commands:
        yield command
        if isinstance(command, app_commands.Group):
            yield from _walk(command.commands)


async def test_command_localisations_are_complete_and_valid():
    client = discord.Client(intents=discord.Intents.default())
    tree = app_commands.CommandTree(client)
    await tree.set_translator(CommandTranslator())
    add_commands(tree)
    commands = tree.get_commands() + tree.get_commands(type=discord.AppCommandType.message)
    payloads = [await c.get_translated_payload(tree, tree.translator) for c in commands]
    seen = 0

    def check(item, chat_input: bool):
        nonlocal seen
        ja_name = item.get("name_localizations", {}).get("ja")
        assert ja_name, f"no Japanese name for {item['name']}"
        if chat_input:
            assert NAME.match(ja_name) and ja_name == ja_name.lower(), ja_name
        if "description" in item and item["description"]:
            ja_desc = item.get("description_localizations", {}).get("ja")
            assert ja_desc and len(ja_desc) <= 100, item["name"]
        for choice in item.get("choices", []):
            assert choice.get("name_localizations", {}).get("ja"), choice
        seen += 1
        for option in item.get("options", []):
            check(option, chat_input)

    for payload in payloads:
        check(payload, payload.get("type", 1) == 1)
    assert seen >= 29  # 3 commands, 9 subcommands and their options
    names = {p["name"] for p in payloads}
    assert names == {"classify", "labels", "Classify image"}
    menu = next(p for p in payloads if p["name"] == "Classify image")
    assert menu["name_localizations"]["ja"] == "画像を分類"
    assert all(len(k) <= 100 for k in JAPANESE_COMMANDS)
