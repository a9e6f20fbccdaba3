"""The commands and listeners, as discord.py cogs: classify (/classify and the "Classify image"
menu), labels (/labels …), posts (image posts: auto-classify, indexing, repost replies), search
(/search and the "Find similar images" menu), index (/index …) and deletions (the index follows
Discord's deletes)."""

from __future__ import annotations

from discord.ext import commands

from bot.app import App
from bot.face.cogs.classify import ClassifyCog
from bot.face.cogs.deletions import DeletionsCog
from bot.face.cogs.index import IndexCog
from bot.face.cogs.labels import LabelsCog
from bot.face.cogs.posts import PostsCog
from bot.face.cogs.search import SearchCog


def make_cogs(app: App | None, bot: commands.Bot) -> list[commands.Cog]:
    """Every cog of the bot; app None registers the commands only (`python -m bot sync`)."""
    return [
        ClassifyCog(app, bot.tree),
        LabelsCog(app),
        PostsCog(app),
        SearchCog(app, bot.tree),
        IndexCog(app, bot),
        DeletionsCog(app, bot),
    ]


__all__ = ["ClassifyCog", "DeletionsCog", "IndexCog", "LabelsCog", "PostsCog", "SearchCog", "make_cogs"]
