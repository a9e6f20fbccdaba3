"""Answering interactions: privately whatever state they are in (refusals, storage failures, rate limits),
and publicly for a saved change (announce)."""

from __future__ import annotations

import logging

import discord

from bot.app import App
from bot.face.texts import LocaleLike, rate_limit_text, text
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


async def announce(interaction: discord.Interaction, content: str) -> None:
    """Make a saved change public after a private deferral: a channel message (the interaction's own
    followups would inherit the deferral's privacy), then the private "thinking…" goes away. Where the
    bot may not post, the moderator still gets the confirmation, privately."""
    try:
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):  # None, a forum or a category: nowhere to post
            raise AttributeError(f"{type(channel).__name__!r} object has no attribute 'send'")
        await channel.send(content)
    except (discord.HTTPException, AttributeError) as e:
        log.warning("could not post a label change in channel %s: %s", interaction.channel_id, e)
        await interaction.followup.send(
            f"{content}\n-# {text(interaction.locale, 'announce.failed')}"[:2000], ephemeral=True
        )
        return
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        pass  # the token expired meanwhile: the private "thinking…" just stays


def rate_limited(app: App, interaction: discord.Interaction, images: int) -> str | None:
    """The refusal text when the member or channel is over its rate limit, else None (and counted)."""
    refusal = app.limiter.check(interaction.user.id, interaction.channel_id or 0, images)
    if refusal is None:
        return None
    return rate_limit_text(interaction.locale, refusal)
