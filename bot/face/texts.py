"""Every text a user sees, and the command-name translator, read from gettext catalogues.

The texts live in `locales/<lang>/LC_MESSAGES/wakeru.po` beside this module (docs/translating.md):
for replies the msgid is a stable key ("source.channel") and the msgstr a str.format template; with
msgctxt "command" the msgid is the English source text of a command name, description or choice.
A language is a directory there, so adding one takes a translator, not a code change. English is
the source language and the fallback for a locale without a catalogue or a text a catalogue lacks.

Replies follow the locale of the user who asked (`interaction.locale`); replies to plain image posts
use `discord.reply_locale`. Command names stay English with localisations, provided to Discord
through `CommandTranslator` at sync.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

import discord
from babel.messages.pofile import read_po
from discord import app_commands

from wakeru.labels import LabelError
from wakeru.protocol import ErrorCode

if TYPE_CHECKING:
    from bot.services.ratelimit import Refusal

log = logging.getLogger("wakeru.texts")

LOCALE_DIR = Path(__file__).with_name("locales")
DOMAIN = "wakeru"
SOURCE_LANGUAGE = "en"  # the texts in the code (command names) and the fallback for everything
COMMAND_CONTEXT = "command"  # msgctxt of command names, descriptions and choice names

# what a reply's language is chosen from: a Discord locale, a tag ("ja", "en-US"), or None (English)
LocaleLike: TypeAlias = "discord.Locale | str | None"


def placeholders(template: str) -> frozenset[str] | None:
    """The str.format fields of a template ("" for a positional {}), None if its braces are broken."""
    try:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name is not None)
    except ValueError:
        return None


def _read(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(key → text, English command text → translation) of one .po file; untranslated and fuzzy
    entries are left out, as gettext does."""
    with path.open("rb") as f:
        catalog = read_po(f, domain=DOMAIN)
    texts: dict[str, str] = {}
    commands: dict[str, str] = {}
    for message in catalog:
        if (
            not message.id
            or not isinstance(message.id, str)
            or not message.string
            or not isinstance(message.string, str)  # a plural's translations (its id is not a str either)
            or message.fuzzy
        ):
            continue  # the header, plural entries (Wakeru has none), untranslated or fuzzy
        if message.context is None:
            texts[message.id] = message.string
        elif message.context == COMMAND_CONTEXT:
            commands[message.id] = message.string
    return texts, commands


def _tag(value: str) -> str:
    return value.replace("_", "-").lower()


class Catalogues:
    """The languages under a locales directory, one `<lang>/LC_MESSAGES/wakeru.po` each.

    <lang> is a language ("ja", "fr") or a language and region ("pt_BR", "zh_TW"), matched to
    Discord locales by `language_for`. English ("en") must be there: it names the keys."""

    def __init__(self, directory: Path | str = LOCALE_DIR):
        self.directory = Path(directory)
        found = {po.parent.parent.name: _read(po) for po in sorted(self.directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))}
        if SOURCE_LANGUAGE not in found:
            raise RuntimeError(
                f"no English texts: {self.directory / SOURCE_LANGUAGE / 'LC_MESSAGES' / DOMAIN}.po "
                "is missing (is the package installed with its locales?)"
            )
        english = found[SOURCE_LANGUAGE][0]
        for language, (texts, _) in found.items():
            for key, template in list(texts.items()):
                fields, source = placeholders(template), english.get(key)
                if source is None:
                    continue
                if fields is not None:
                    english_fields = placeholders(source)
                    if english_fields is None:  # English's own braces are broken: no translation can match
                        raise TypeError(f"the English text of {key!r} has broken {{fields}}: {source!r}")
                    if fields <= english_fields:
                        continue
                # a broken translation would fail in .format(); English is better than an error
                log.warning(
                    "ignoring the %s text of %r: its {fields} do not match the English %r", language, key, source
                )
                del texts[key]
        self._texts = {language: texts for language, (texts, _) in found.items()}
        self._commands = {language: commands for language, (_, commands) in found.items()}
        self._by_tag = {_tag(language): language for language in found}
        self.languages: tuple[str, ...] = tuple(found)

    @property
    def english(self) -> Mapping[str, str]:
        """key → English text: every key there is."""
        return MappingProxyType(self._texts[SOURCE_LANGUAGE])

    def texts(self, language: str) -> Mapping[str, str]:
        """What one catalogue itself has (no fallback), key → text."""
        return MappingProxyType(self._texts[language])

    def commands(self, language: str) -> Mapping[str, str]:
        """What one catalogue has for the commands, English text → its text."""
        return MappingProxyType(self._commands[language])

    def language_for(self, locale: LocaleLike) -> str:
        """The best catalogue for a Discord locale ("ja", "en-US", "pt-BR", "es-419"): the same tag,
        else its language ("es" for "es-ES"), else another region of it ("pt_BR" for "pt-PT"),
        else English."""
        value = locale.value if isinstance(locale, discord.Locale) else (locale or "")
        tag = _tag(str(value))
        if tag in self._by_tag:
            return self._by_tag[tag]
        primary = tag.split("-")[0]
        if primary in self._by_tag:
            return self._by_tag[primary]
        for other, language in sorted(self._by_tag.items()):
            if primary and other.split("-")[0] == primary:
                return language
        return SOURCE_LANGUAGE

    def text(self, language: str, key: str) -> str:
        """The template of key in language, or in English where that language lacks it (KeyError
        for a key English does not have either)."""
        table = self._texts.get(language, {})
        return table[key] if key in table else self._texts[SOURCE_LANGUAGE][key]

    def command(self, language: str, message: str) -> str | None:
        """A command name/description/choice in language; None for English (the names themselves)
        and for what the language has not translated, so Discord shows the English."""
        if language == SOURCE_LANGUAGE:
            return None
        return self._commands.get(language, {}).get(message)


CATALOGUES = Catalogues()

# key → English text (the key list; other languages through `text`). Read-only.
TEXTS: Mapping[str, str] = CATALOGUES.english


def language(locale: LocaleLike) -> str:
    """The catalogue that answers a locale: "ja" for Japanese, "en" (the fallback) for English and
    any language without a catalogue."""
    return CATALOGUES.language_for(locale)


def text(locale: LocaleLike, key: str, **fields: object) -> str:
    return CATALOGUES.text(language(locale), key).format(**fields)


def _has(key: str) -> bool:
    return key in CATALOGUES.english


def label_error(locale: LocaleLike, error: LabelError) -> str:
    key = f"labels.{error.code}"
    if not _has(key):
        return text(locale, "labels.invalid", detail=str(error))
    fields = dict(error.params)
    if "label" in fields:  # long labels are cut so the message stays readable
        label = str(fields["label"])
        fields["label"] = label if len(label) <= 30 else label[:30] + "…"
    return text(locale, key, **fields)


def rate_limit_text(locale: LocaleLike, refusal: Refusal) -> str:
    """「画像の送信が多すぎます（1分あたり20枚まで）。N秒後に…」 for a bot.ratelimit.Refusal."""
    return text(
        locale, f"rate.{refusal.scope}", rate=f"{refusal.per_minute:g}", seconds=max(1, round(refusal.retry_after))
    )


def error_text(locale: LocaleLike, code: ErrorCode | str) -> str:
    code = code.value if isinstance(code, ErrorCode) else code
    key = f"error.{code}"
    return text(locale, key if _has(key) else "error.internal_error")


class CommandTranslator(app_commands.Translator):
    """Names and descriptions of the English commands in every other language with a catalogue
    (msgctxt "command"; names must satisfy Discord's rules, descriptions ≤ 100 characters)."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        return CATALOGUES.command(CATALOGUES.language_for(locale), string.message)
