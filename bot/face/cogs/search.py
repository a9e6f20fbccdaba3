"""The search cog: /search (text → images) and the "Find similar images" message menu (image → images).

Results come only from this server and only from channels and threads the asking member can read
now (services/visibility.py); they are private unless the member asks for a public answer.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.app_commands import locale_str as _T

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.face.respond import code_text, rate_limited, refuse, storage_error
from bot.face.results import result_embeds, with_fresh_urls
from bot.face.texts import error_text, text
from bot.services.visibility import Visibility
from bot.store import StorageError
from bot.store.images import SearchHit

log = logging.getLogger("wakeru.search")

MAX_QUERY = 200


class SearchCog(WakeruCog):
    def __init__(self, app: App | None, tree: app_commands.CommandTree):
        super().__init__(app)
        self._tree = tree
        self.menu = app_commands.ContextMenu(name=_T("Find similar images"), callback=self.similar)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self._tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self._tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name=_T("search"), description=_T("Search this server's indexed images by words"))
    @app_commands.guild_only()
    @app_commands.rename(query=_T("query"), channel=_T("channel"), author=_T("author"), public=_T("public"))
    @app_commands.describe(
        query=_T("What the picture shows, in words"),
        channel=_T("Only images of this channel (and its threads)"),
        author=_T("Only images posted by this member"),
        public=_T("Show the results to everyone in the channel"),
    )
    async def search(
        self,
        interaction: discord.Interaction,
        query: app_commands.Range[str, 1, MAX_QUERY],
        channel: app_commands.AppCommandChannel | app_commands.AppCommandThread | None = None,
        author: discord.User | None = None,
        public: bool = False,
    ) -> None:
        app, locale = self.app, interaction.locale
        visibility = _visibility(interaction, public=public)
        if visibility is None:
            return await refuse(interaction, text(locale, "guild_only"))
        if not query.strip():
            return await refuse(interaction, text(locale, "search.empty_query"))
        if (limited := rate_limited(app, interaction, 1)) is not None:  # a query costs the worker a text pass
            return await refuse(interaction, limited)
        await interaction.response.defer(thinking=True, ephemeral=not public)
        result = await app.classifier.embed_query(query.strip())
        if not result.ok or result.embedding is None:
            return await refuse(interaction, error_text(locale, result.error or "internal_error"))
        model = result.embedding_model or app.indexer.model()
        try:
            hits = await app.indexer.search(
                visibility,
                result.embedding,
                model,
                channel_id=channel.id if channel is not None else None,
                channel_parent_id=getattr(channel, "parent_id", None),
                author_id=author.id if author is not None else None,
            )
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        head = text(locale, "search.head", query=code_text(query.strip()))
        await self._answer(interaction, visibility, hits, head, text(locale, "search.nothing", query=code_text(query)))

    async def similar(self, interaction: discord.Interaction, message: discord.Message) -> None:
        app, locale = self.app, interaction.locale
        visibility = _visibility(interaction)
        if visibility is None:
            return await refuse(interaction, text(locale, "guild_only"))
        images = [a for a in message.attachments if app.is_image(a)]
        if not images:
            return await refuse(interaction, text(locale, "classify.no_images"))
        if (limited := rate_limited(app, interaction, 1)) is not None:
            return await refuse(interaction, limited)
        await interaction.response.defer(thinking=True, ephemeral=True)
        model = app.indexer.model()
        try:
            stored = [row for row in await app.index.get(visibility.guild.id, message.id) if row.model == model]
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        first = next((row for row in stored if row.attachment_id == images[0].id), None)
        if first is not None:  # indexed with the current model: no need to ask the worker
            embedding = first.embedding
        else:
            answer = await app.classifier.classify_attachment(images[0], (), source="similar", embed=True)
            if not answer.result.ok or answer.result.embedding is None:
                return await refuse(interaction, error_text(locale, answer.result.error or "internal_error"))
            embedding, model = answer.result.embedding, answer.result.embedding_model or model
        try:
            hits = await app.indexer.search(visibility, embedding, model, exclude_message_id=message.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        head = text(locale, "similar.head", name=code_text(images[0].filename))
        await self._answer(interaction, visibility, hits, head, text(locale, "similar.nothing"))

    async def _answer(
        self,
        interaction: discord.Interaction,
        visibility: Visibility,
        hits: list[SearchHit],
        head: str,
        nothing: str,
    ) -> None:
        results = await with_fresh_urls(visibility.guild, self.app.index, hits)
        if not results:
            await interaction.followup.send(nothing)
            return
        embeds = result_embeds(interaction.locale, results)
        await interaction.followup.send(
            content=text(interaction.locale, "search.count", head=head, count=len(embeds)), embeds=embeds
        )


def _visibility(interaction: discord.Interaction, *, public: bool = False) -> Visibility | None:
    """Who the results are for: the member (private answers), or also everyone in the channel (public ones)."""
    guild, member = interaction.guild, interaction.user
    if guild is None or not isinstance(member, discord.Member):
        return None
    return Visibility(guild, member, public=public)
