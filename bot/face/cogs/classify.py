"""The classify cog: /classify and the "Classify image" message context menu.

Cheap checks answer at once (ephemeral); anything that downloads, reads the
database or waits for the model runs after a deferral, so the 3-second window
for the first response always holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str as _T

from bot.app import App
from bot.face.cogs.base import WakeruCog
from bot.face.corrections import correction_view
from bot.face.render import MAX_EMBEDS, reply
from bot.face.respond import code_text, rate_limited, refuse, storage_error
from bot.face.texts import label_error, text
from bot.services.classifying import ImageAnswer
from bot.services.labelsets import LabelSource, parent_id, resolve, resolve_personal
from bot.services.samples import read_sample
from bot.store import StorageError
from wakeru.labels import LabelError, parse_labels

if TYPE_CHECKING:
    from discord.abc import MessageableChannel
    from discord.interactions import InteractionChannel

log = logging.getLogger("wakeru.commands")

# Discord's answers for an interaction token that is no longer valid (older than 15 minutes).
_EXPIRED_TOKEN_CODES = {10015, 10062, 50027}  # Unknown Webhook, Unknown Interaction, Invalid Webhook Token


async def channel_source(
    app: App, interaction: discord.Interaction, channel: InteractionChannel | MessageableChannel | None
) -> LabelSource:
    channel_id = getattr(channel, "id", None) or interaction.channel_id
    return await resolve(app.store, app.config, interaction.guild_id, channel_id, parent_id(channel))


async def _send_answers(
    interaction: discord.Interaction,
    answers: list[ImageAnswer],
    source: LabelSource,
    total: int,
    *,
    view: discord.ui.View | None = None,
    ephemeral: bool = False,
) -> None:
    content, embeds = reply(answers, source, interaction.locale, total)
    extra: dict[str, Any] = {"view": view} if view is not None else {}
    try:
        # content None (no text, only embeds) is what discord.py sends as null; its annotation says str only
        await interaction.followup.send(
            content=content,  # type: ignore[arg-type]
            embeds=embeds,
            ephemeral=ephemeral,
            **extra,
        )
    except discord.HTTPException as e:
        if ephemeral or (e.code not in _EXPIRED_TOKEN_CODES and e.status != 401):
            raise  # a private answer is never posted in the channel instead
        # The answer outlived the interaction token: post it in the channel instead, naming
        # (not pinging: allowed_mentions is none) the member who asked.
        log.warning("interaction token expired before the answer was ready (%s); posting in the channel", e)
        note = text(interaction.locale, "expired.note", user=interaction.user.mention)
        try:
            channel = interaction.channel
            if not isinstance(channel, discord.abc.Messageable):  # None, a forum or a category: nowhere to post
                raise AttributeError(f"{type(channel).__name__!r} object has no attribute 'send'")
            await channel.send(content=f"{note}\n{content or ''}"[:2000], embeds=embeds)
        except (discord.HTTPException, AttributeError) as e2:
            log.warning("could not post the answer in the channel either: %s", e2)


class ClassifyCog(WakeruCog):
    """Anyone may classify: an attachment, a sample image, or a message's images (context menu)."""

    def __init__(self, app: App | None, tree: app_commands.CommandTree):
        super().__init__(app)
        self._tree = tree
        # discord.py cannot declare a context menu inside a cog: it is made here, bound to this cog
        # also a user-installed app: a member classifies a picture in any server or DM (answered privately)
        self.menu = app_commands.ContextMenu(
            name=_T("Classify image"),
            callback=self.classify_message,
            allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
        )

    async def cog_load(self) -> None:
        self._tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self._tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(
        name=_T("classify"), description=_T("Classify an image against this channel's labels (or labels you give)")
    )
    @app_commands.rename(image=_T("image"), labels=_T("labels"), sample=_T("sample"))
    @app_commands.describe(
        image=_T("The image to classify"),
        labels=_T("Labels to use instead of the channel's, separated by commas or 、"),
        sample=_T("Classify one of the bot's sample images instead"),
    )
    async def classify(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment | None = None,
        labels: str | None = None,
        sample: str | None = None,
    ) -> None:
        app = self.app
        config, locale = app.config, interaction.locale
        if image is not None and sample:
            return await refuse(interaction, text(locale, "classify.both"))
        if image is None and not sample:
            return await refuse(interaction, text(locale, "classify.need_image"))
        if image is not None and not app.is_image(image):
            return await refuse(interaction, text(locale, "classify.not_image", name=code_text(image.filename)))
        if sample and sample not in app.samples:
            return await refuse(interaction, text(locale, "classify.unknown_sample", name=code_text(sample)))
        adhoc = None
        if labels is not None:
            try:
                adhoc = parse_labels(
                    labels, max_count=config.labels.max_count, max_length=config.labels.max_length, min_count=2
                )
            except LabelError as e:
                return await refuse(interaction, label_error(locale, e))
        if (limited := rate_limited(app, interaction, 1)) is not None:
            return await refuse(interaction, limited)
        await interaction.response.defer(thinking=True)
        source = LabelSource("adhoc", adhoc) if adhoc else await channel_source(app, interaction, interaction.channel)
        if image is not None:
            answer = await app.classifier.classify_attachment(image, source.labels, source="command")
        else:
            assert sample is not None
            data = await read_sample(config.discord.samples_dir, sample, app.samples)
            if data is None:  # deleted since start-up
                return await refuse(interaction, text(locale, "classify.unknown_sample", name=code_text(sample)))
            answer = await app.classifier.classify_bytes(sample, data, source.labels, source="command")
        await _send_answers(interaction, [answer], source, 1)

    @classify.autocomplete("sample")
    async def _sample_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        names = [n for n in self.app.samples if needle in n.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    async def classify_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """In a server that has the bot: a public answer against the channel's labels, with the "Wrong?"
        button. Anywhere else (a DM, a server the member's own install reaches): a private answer against
        the member's own set (/labels set scope:me) or the default, in one followup (Discord allows 5 there)."""
        app = self.app
        images = [a for a in message.attachments if app.is_image(a)]
        if not images:
            return await refuse(interaction, text(interaction.locale, "classify.no_images"))
        if (limited := rate_limited(app, interaction, min(len(images), MAX_EMBEDS))) is not None:
            return await refuse(interaction, limited)
        guild_app = interaction.is_guild_integration()
        await interaction.response.defer(thinking=True, ephemeral=not guild_app)
        try:
            if guild_app:
                source = await channel_source(app, interaction, message.channel)
            else:
                source = await resolve_personal(app.store, app.config, interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(interaction.locale, e))
        answers = await app.classifier.classify_attachments(images[:MAX_EMBEDS], source.labels, source="menu")
        view = None
        if guild_app and any(a.result.ok for a in answers):
            view = correction_view(interaction.locale, message.channel.id, message.id)
        await _send_answers(interaction, answers, source, len(images), view=view, ephemeral=not guild_app)
