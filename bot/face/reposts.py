"""Repost replies: "this picture was posted before", with a "Not a repost" button for moderators.

The button is a discord.py DynamicItem: its custom id carries both attachment ids, so it keeps working
after a restart without any stored view. A moderator's click records the pair (it is never reported
again) and turns the reply into a short note.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import discord

from bot.face.checks import refusal_key
from bot.face.respond import refuse, storage_error
from bot.face.results import jump_url
from bot.face.texts import LocaleLike, text
from bot.store import StorageError
from bot.store.images import IndexedImage

log = logging.getLogger("wakeru.reposts")


class NotRepostButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"wakeru:notrepost:(?P<new>\d+):(?P<old>\d+)"
):
    def __init__(self, new: int, old: int, label: str = "Not a repost") -> None:
        super().__init__(
            discord.ui.Button(
                label=label[:80], style=discord.ButtonStyle.secondary, custom_id=f"wakeru:notrepost:{new}:{old}"
            )
        )
        self.new, self.old = new, old

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> NotRepostButton:
        return cls(int(match["new"]), int(match["old"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        app = getattr(interaction.client, "app", None)
        locale = interaction.locale
        if app is None or interaction.guild_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        if refusal_key(interaction, "channel", app.config.discord.moderator_role_ids) is not None:
            return await refuse(interaction, text(locale, "reposts.denied"))
        try:
            await app.index.mark_not_repost(interaction.guild_id, self.new, self.old, user_id=interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        log.info("attachments %s and %s marked not a repost by %s", self.new, self.old, interaction.user.id)
        note = text(app.config.discord.reply_locale, "reposts.cleared", user=interaction.user.mention)
        await interaction.response.edit_message(content=note, view=None)


def repost_reply(locale: LocaleLike, new_attachment: int, earlier: IndexedImage) -> tuple[str, discord.ui.View]:
    """The reply's text (a link to the earlier post, and its date) and the button."""
    content = text(
        locale,
        "reposts.found",
        link=jump_url(earlier.guild_id, earlier.channel_id, earlier.message_id),
        date=f"<t:{int(earlier.posted_at)}:D>",
    )
    view = discord.ui.View(timeout=None)
    view.add_item(NotRepostButton(new_attachment, earlier.attachment_id, text(locale, "reposts.button")))
    return content, view
