"""Answering an interaction privately, whatever state it is in."""

from __future__ import annotations

import logging

import discord

from bot.face.texts import LocaleLike, text
from bot.store import StorageError

log = logging.getLogger("wakeru.storage")


async def refuse(interaction: discord.Interaction, message: str) -> None:
    """An ephemeral answer that works whether or not the interaction was already answered.

    After a public deferral Discord makes the first followup public whatever its flag."""
    message = message if len(message) <= 2000 else message[:1999] + "…"
    if interaction.response.is_done():
        await interaction.followup.send(message, ephemeral=True)
    else:
        await interaction.response.send_message(message, ephemeral=True)


def code_text(value: str) -> str:
    """User text shown inside `code`: no backticks, no escaping (it would show as backslashes)."""
    return value.replace("`", "'")[:100]


def storage_error(locale: LocaleLike, error: StorageError) -> str:
    """The moderator's view of a storage failure: what kind, never the file, host or database (the
    operator's full message, which names them, goes to the log)."""
    log.warning("the label store failed: %s", error)
    reason = error.reason if error.reason in StorageError.REASONS else "broken"
    return text(locale, "storage_error", reason=text(locale, f"storage.{reason}"))
