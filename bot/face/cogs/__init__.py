"""The commands and listeners, as discord.py cogs: classify (/classify and the "Classify image"
menu), labels (/labels …) and posts (auto-classify of image posts)."""

from __future__ import annotations

from discord.ext import commands

from bot.app import App
from bot.face.cogs.classify import ClassifyCog
from bot.face.cogs.labels import LabelsCog
from bot.face.cogs.posts import PostsCog


def make_cogs(app: App | None, bot: commands.Bot) -> list[commands.Cog]:
    """Every cog of the bot; app None registers the commands only (`python -m bot sync`)."""
    return [ClassifyCog(app, bot.tree), LabelsCog(app), PostsCog(app)]


__all__ = ["ClassifyCog", "LabelsCog", "PostsCog", "make_cogs"]
