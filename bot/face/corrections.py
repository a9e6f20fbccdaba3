"""Members correcting wrong answers: the "Wrong?" button under an embed answer and the private select it opens.

Both are discord.py DynamicItems: the custom ids carry what the callbacks need (the post's channel and
message; for a select also the image and which option was shown), so they keep working after a restart
with no stored view. The select lists the channel's labels as they are when the button is clicked, those the answer
ranked first (read back from its own embed) at the top, plus "none of these"; a set longer than a select
(25 options) ends with "another label…", which opens a form. A member has one correction per image and
may change it; a choice outside the set is refused.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import discord

from bot.face.render import MAX_EMBEDS, escape, shown_labels, title_of
from bot.face.respond import refuse, storage_error
from bot.face.results import messageable
from bot.face.texts import LocaleLike, text
from bot.services.labelsets import parent_id, resolve
from bot.store import Correction, StorageError
from wakeru.labels import label_name, tag_key

log = logging.getLogger("wakeru.corrections")

MAX_SELECTS = 5  # action rows per message
MAX_OPTIONS = 25  # per select; one is "none of these"
NONE = "-"  # the value of "none of these"
OTHER = "+"  # the value of "another label…", offered when the set is longer than the select


class WrongButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"wakeru:wrong:(?P<channel>\d+):(?P<message>\d+)"
):
    """Under an answer to the post `message` in `channel`."""

    def __init__(self, channel_id: int, message_id: int, label: str = "Wrong?") -> None:
        super().__init__(
            discord.ui.Button(
                label=label[:80],
                style=discord.ButtonStyle.secondary,
                custom_id=f"wakeru:wrong:{channel_id}:{message_id}",
            )
        )
        self.channel_id, self.message_id = channel_id, message_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> WrongButton:
        return cls(int(match["channel"]), int(match["message"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        app = getattr(interaction.client, "app", None)
        locale = interaction.locale
        guild = interaction.guild
        if app is None or guild is None or interaction.message is None:
            return await refuse(interaction, text(locale, "guild_only"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            post = await messageable(guild, self.channel_id).fetch_message(self.message_id)
        except discord.NotFound:
            return await refuse(interaction, text(locale, "wrong.gone"))
        except discord.HTTPException as e:
            log.info("post %s for a correction could not be read: %s", self.message_id, e)
            return await refuse(interaction, text(locale, "wrong.unreadable"))
        try:
            names = await _label_names(app, interaction, self.channel_id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        images = [a for a in post.attachments if app.is_image(a)][:MAX_EMBEDS]
        view = discord.ui.View(timeout=None)
        answered = 0
        for embed in interaction.message.embeds:
            # each answer embed is titled with its image's file name: an edit may have removed images since
            attachment = next((a for a in images if title_of(a.filename) == embed.title), None)
            ranked = shown_labels(embed, names)
            if attachment is None or not ranked:  # gone, or that image's answer was an error
                continue
            images.remove(attachment)
            answered += 1
            if len(view.children) >= MAX_SELECTS:
                continue
            try:
                earlier = await app.store.get_correction(attachment.id, interaction.user.id)
            except StorageError:
                earlier = None
            select = FixSelect.build(
                locale, self.channel_id, self.message_id, attachment, ranked, names, earlier, len(view.children)
            )
            view.add_item(select)
        if not view.children:
            return await refuse(interaction, text(locale, "wrong.nothing"))
        prompt = text(locale, "wrong.pick")
        if answered > MAX_SELECTS:
            prompt += "\n-# " + text(locale, "wrong.first_images", count=MAX_SELECTS)
        await interaction.followup.send(prompt, view=view, ephemeral=True)


async def _label_names(app: Any, interaction: discord.Interaction, channel_id: int) -> list[str]:
    """The names of the labels in force where the post is (a thread follows its channel)."""
    assert interaction.guild is not None
    source = await resolve(
        app.store, app.config, interaction.guild.id, channel_id, parent_id(_channel(interaction, channel_id))
    )
    return [label_name(label) for label in source.labels]


def _channel(interaction: discord.Interaction, channel_id: int) -> object:
    """The post's channel or thread: cached, else the interaction's own copy (an uncached thread: it knows its
    parent), else None."""
    assert interaction.guild is not None
    cached = interaction.guild.get_channel_or_thread(channel_id)
    if cached is None and interaction.channel_id == channel_id:
        return interaction.channel
    return cached


class FixSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"wakeru:fix:(?P<channel>\d+):(?P<message>\d+):(?P<attachment>\d+)",
):
    """The private select of one image: the labels the answer ranked first (the first option is the one it
    showed), then the rest of the set; "another label…" (a form) when the set does not fit; "none of these"."""

    def __init__(self, select: discord.ui.Select[Any], channel_id: int, message_id: int, attachment_id: int):
        super().__init__(select)
        self.channel_id, self.message_id, self.attachment_id = channel_id, message_id, attachment_id

    @classmethod
    def build(
        cls,
        locale: LocaleLike,
        channel_id: int,
        message_id: int,
        attachment: discord.Attachment,
        ranked: list[str],
        names: list[str],
        earlier: Correction | None,
        row: int,
    ) -> FixSelect:
        listed = list(dict.fromkeys([*ranked, *names]))
        overflow = len(listed) > MAX_OPTIONS - 1
        listed = listed[: MAX_OPTIONS - (2 if overflow else 1)]
        picked = None if earlier is None else (NONE if earlier.chosen is None else earlier.chosen)
        options = [
            discord.SelectOption(label=name[:100], value=str(i), default=picked == name)
            for i, name in enumerate(listed)
        ]
        if overflow:
            options.append(discord.SelectOption(label=text(locale, "wrong.other")[:100], value=OTHER))
        options.append(discord.SelectOption(label=text(locale, "wrong.none")[:100], value=NONE, default=picked == NONE))
        custom_id = f"wakeru:fix:{channel_id}:{message_id}:{attachment.id}"
        placeholder = text(locale, "wrong.placeholder", file=attachment.filename[:40], label=ranked[0][:40])
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=custom_id, placeholder=placeholder[:150], options=options, row=row
        )
        return cls(select, channel_id, message_id, attachment.id)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> FixSelect:
        assert isinstance(item, discord.ui.Select)  # the template only matches selects' custom ids
        return cls(item, int(match["channel"]), int(match["message"]), int(match["attachment"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        locale = interaction.locale
        options = [o for o in self.item.options if o.value not in (NONE, OTHER)]
        values = self.item.values
        if not values or not options:
            return await refuse(interaction, text(locale, "wrong.nothing"))
        shown = options[0].label
        if values[0] == OTHER:  # the set is longer than a select: the member types the label
            await interaction.response.send_modal(
                OtherLabel(locale, self.channel_id, self.message_id, self.attachment_id, shown)
            )
            return
        chosen = None if values[0] == NONE else options[int(values[0])].label
        await _record(interaction, self.channel_id, self.message_id, self.attachment_id, shown, chosen)


class OtherLabel(discord.ui.Modal):
    """A form for a label the select could not list: checked against the set (by name, NFKC, any case)."""

    def __init__(self, locale: LocaleLike, channel_id: int, message_id: int, attachment_id: int, shown: str):
        super().__init__(title=text(locale, "wrong.other")[:45], timeout=600)
        self.channel_id, self.message_id, self.attachment_id, self.shown = channel_id, message_id, attachment_id, shown
        self.label: discord.ui.TextInput[OtherLabel] = discord.ui.TextInput(
            label=text(locale, "wrong.other_field")[:45], max_length=100
        )
        self.add_item(self.label)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _record(interaction, self.channel_id, self.message_id, self.attachment_id, self.shown, self.label.value)


async def _record(
    interaction: discord.Interaction,
    channel_id: int,
    message_id: int,
    attachment_id: int,
    shown: str,
    chosen: str | None,
) -> None:
    """Store a member's choice for an image (their earlier one replaced) and thank them privately."""
    app = getattr(interaction.client, "app", None)
    locale = interaction.locale
    if app is None or interaction.guild is None:
        return await refuse(interaction, text(locale, "guild_only"))
    # the post may have been deleted (or the picture edited out) since the list opened: nothing to store then,
    # as the deletion has already removed the post's other corrections
    try:
        post = await messageable(interaction.guild, channel_id).fetch_message(message_id)
    except discord.NotFound:
        return await refuse(interaction, text(locale, "wrong.gone"))
    except discord.HTTPException as e:
        log.info("post %s for a correction could not be read: %s", message_id, e)
        return await refuse(interaction, text(locale, "wrong.unreadable"))
    if all(a.id != attachment_id for a in post.attachments):
        return await refuse(interaction, text(locale, "wrong.gone"))
    try:
        names = await _label_names(app, interaction, channel_id)
    except StorageError as e:
        return await refuse(interaction, storage_error(locale, e))
    if chosen is not None:
        by_key = {tag_key(name): name for name in names}
        found = by_key.get(tag_key(chosen))
        if found is None:
            return await refuse(interaction, text(locale, "wrong.not_in_set", label=escape(chosen, 100)))
        chosen = found
    correction = Correction(
        guild_id=interaction.guild.id,
        channel_id=channel_id,
        parent_id=parent_id(_channel(interaction, channel_id)),
        message_id=message_id,
        attachment_id=attachment_id,
        user_id=interaction.user.id,
        shown=shown,
        chosen=chosen,
        labels=tuple(names),
        at=time.time(),
    )
    try:
        new = await app.store.record_correction(correction)
    except StorageError as e:
        return await refuse(interaction, storage_error(locale, e))
    log.info("correction of image %s by %s: %r → %r", attachment_id, interaction.user.id, shown, chosen)
    said = text(locale, "wrong.none") if chosen is None else escape(chosen, 100)
    await refuse(interaction, text(locale, "wrong.thanks" if new else "wrong.changed", label=said))


def correction_view(locale: LocaleLike, channel_id: int, message_id: int) -> discord.ui.View:
    """The view of an embed answer to a post: the "Wrong?" button."""
    view = discord.ui.View(timeout=None)
    view.add_item(WrongButton(channel_id, message_id, text(locale, "wrong.button")))
    return view
