"""The labels cog, /labels: show and manage the label set of a channel (or thread) or of the whole server.

Every subcommand that changes a set (and /labels history) carries the `moderator_only` check
(checks.py), which discord.py runs before the command; a refusal is answered by the tree's error
handler. A change reads the current version and writes with it, so two moderators cannot overwrite each
other unnoticed (VersionConflict).

Answers: everything that can go wrong is said to the moderator alone. Cheap checks
answer at once; the rest runs after a private deferral, whose first followup (a
refusal) stays private. A change that was saved is announced in the channel as a
message of its own, naming who made it and listing the set members' posts are now
ranked against, and the private "thinking…" response is removed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _T

from bot.face.checks import moderator_only
from bot.face.cogs.base import WakeruCog, moderator_roles
from bot.face.render import describe_source, escape
from bot.face.respond import announce, code_text, refuse, storage_error
from bot.face.texts import LocaleLike, label_error, text
from bot.services.corrections import summarise
from bot.services.labelsets import (
    PERSONAL_SETS,
    LabelSource,
    auto_classify_enabled,
    inherited,
    parent_id,
    resolve,
    resolve_personal,
)
from bot.services.stats import ordered_counts, render_chart
from bot.services.styles import STYLES, forum_of, resolve_style
from bot.services.tagging import untagged_labels
from bot.store import Correction, HistoryEntry, NothingToUndo, StorageError, VersionConflict
from wakeru.labels import LabelError, custom_emoji_id, label_emoji, label_name, normalise_labels, split_labels

log = logging.getLogger("wakeru.labels")

_SCOPES = [Choice(name=_T("channel"), value="channel"), Choice(name=_T("server"), value="server")]
# label sets may also be a member's own (scope me): used where they classify with the app they installed
_SET_SCOPES = [*_SCOPES, Choice(name=_T("me"), value="me")]
_SCOPE_HELP = _T("Which label set: this channel's, the server's, or your own")
_STYLE_SCOPE_HELP = _T("Which setting: this channel's or the server's")
_CHANNEL_HELP = _T("The channel to manage (a forum or media channel, say); default: this one")
_STYLES = [Choice(name=_T(style), value=style) for style in STYLES]
# any text, announcement, forum or media channel (a forum has no message box: it is managed from elsewhere)
ChannelOption = discord.TextChannel | discord.ForumChannel
_LIST_CHARS = 3500  # an embed description holds 4,096
_MESSAGE_CHARS = 2000  # a message's content

P = TypeVar("P")  # what a change prepares before the deferral (the parsed labels, a preset…)


class _Refusal(Exception):
    """A mutation that must not happen; the message is already localised."""


@dataclass(frozen=True, slots=True)
class Target:
    """The scope a /labels command reads or changes."""

    kind: str  # "channel" | "server" | "me"
    guild_id: int  # PERSONAL_SETS for a member's own set
    channel_id: int | None  # None: the server's; the member's id for their own set
    parent_id: int | None = None  # a thread's channel
    channel: object = None  # the channel object, when there is one (forums: tags)

    @property
    def personal(self) -> bool:
        return self.kind == "me"


def _where(locale: LocaleLike, target: Target) -> str:
    if target.personal:
        return text(locale, "where.me")
    if target.channel_id is None:
        return text(locale, "where.server")
    return text(locale, "where.channel", channel=f"<#{target.channel_id}>")


def _title_where(locale: LocaleLike, target: Target) -> str:
    """Embed titles cannot render <#id>: the channel's name instead."""
    if target.personal or target.channel_id is None:
        return _where(locale, target)
    return "#" + escape(getattr(target.channel, "name", None) or str(target.channel_id), 100)


def _label_list(labels: tuple[str, ...], limit: int = _LIST_CHARS) -> str:
    out = ""
    for i, label in enumerate(labels):  # whole labels only: a cut escape sequence would break the markdown
        item = ("、" if i else "") + escape(label, 60)
        if len(out) + len(item) > limit - 1:
            return out + "…"
        out += item
    return out


def _quoted(locale: LocaleLike, labels: Sequence[str], shown: int = 10) -> str:
    """「a」、「b」… for replies, at most `shown` of them so a reply stays far below 2,000 characters."""
    quoted = "、".join(f"「{escape(label, 60)}」" for label in labels[:shown])
    return quoted + (" " + text(locale, "more", count=len(labels) - shown) if len(labels) > shown else "")


def _by_name(labels: Sequence[str]) -> dict[str, str]:
    return {label_name(label): label for label in labels}


_moderators = moderator_only(moderator_roles)

F = TypeVar("F")


def _where_options(scopes: list[Choice[str]] | None = _SET_SCOPES, scope_help: _T = _SCOPE_HELP) -> Callable[[F], F]:
    """The `scope` (these choices; None: no scope) and `channel` options a /labels command takes, named and
    described (discord.py merges these with a command's own rename/describe/choices)."""

    def decorate(func: F) -> F:
        if scopes is not None:
            func = app_commands.choices(scope=scopes)(func)
            func = app_commands.describe(scope=scope_help)(func)
            func = app_commands.rename(scope=_T("scope"))(func)
        func = app_commands.describe(channel=_CHANNEL_HELP)(func)
        return app_commands.rename(channel=_T("channel"))(func)

    return decorate


def _tag_labels(forum: discord.ForumChannel) -> list[str]:
    """A forum's tag names as label text, with a tag's emoji as the label's (`犬=🐕`)."""
    labels = []
    for tag in forum.available_tags:
        # "=" starts a label's emoji: a tag named E=mc2 becomes the label E＝mc2, which still matches it (NFKC)
        name = tag.name.replace("=", "\uff1d")
        emoji = tag.emoji
        if emoji is None or not emoji.name:
            labels.append(name)
        elif emoji.id is None:
            labels.append(f"{name}={emoji.name}")
        else:
            labels.append(f"{name}=<{'a' if emoji.animated else ''}:{emoji.name}:{emoji.id}>")
    return labels


class LabelsCog(WakeruCog):
    """The /labels group: anyone may look; moderators change (and see the history); members keep their own set."""

    labels = app_commands.Group(
        name=_T("labels"),
        description=_T("Show and manage the label sets used to classify images"),
        # servers, and (scope me only) the bot's DMs and private channels where a member installed the app;
        # no default_permissions: show and stats are for everyone (a default would hide the whole group), the
        # changes carry the moderator check instead
        allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
        allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
    )

    # ---- reading ---------------------------------------------------------------------

    @labels.command(name=_T("show"), description=_T("Show the labels used here"))
    @_where_options()
    async def show(
        self, interaction: discord.Interaction, scope: Choice[str] | None = None, channel: ChannelOption | None = None
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, scope, channel)
        if target is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            source = await self._source(target)
            enabled = style = None
            if target.kind == "channel":
                assert target.channel_id is not None
                enabled = await auto_classify_enabled(
                    app.store, app.config, target.guild_id, target.channel_id, target.parent_id
                )
            server_style = None
            if target.kind == "server":
                server_style = await app.store.get_style(target.guild_id, None)
            elif not target.personal:
                forum = forum_of(target.channel) is not None
                style = await resolve_style(
                    app.store, target.guild_id, target.channel_id, target.parent_id, forum=forum
                )
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        lines = [f"-# {describe_source(source, locale)}"]
        own_kind = {"server": "server", "me": "me"}.get(target.kind, "channel")
        if source.kind != own_kind:
            lines.insert(0, text(locale, "show.inherited", source=describe_source(source, locale)))
        if enabled is not None:
            lines.append(text(locale, "show.auto", state=text(locale, "state.on" if enabled else "state.off")))
        if style is not None:
            key = "show.style" if style.kind == "channel" else "show.style_inherited"
            lines.append(text(locale, key, style=text(locale, f"style.{style.style}")))
        if server_style is not None:
            key = "show.style_stored" if server_style == "tags" else "show.style"
            lines.append(text(locale, key, style=text(locale, f"style.{server_style}")))
        lines += self._forum_notes(locale, target, source.labels)
        embed = discord.Embed(
            title=text(locale, "show.title", where=_title_where(locale, target))[:256],
            description=(_label_list(source.labels) + "\n\n" + "\n".join(lines))[:4096],
        )
        await interaction.followup.send(embed=embed, ephemeral=True)

    def _forum_notes(self, locale: LocaleLike, target: Target, labels: tuple[str, ...]) -> list[str]:
        """For a forum or media channel: the labels no tag is named like, and a missing Manage Threads."""
        forum = forum_of(target.channel)
        if forum is None:
            return []
        notes = []
        untagged = untagged_labels(labels, forum.available_tags)
        if untagged:
            notes.append(text(locale, "show.untagged", labels=_quoted(locale, [label_name(u) for u in untagged])))
        me = forum.guild.me
        if me is not None and not forum.permissions_for(me).manage_threads:
            self.app.notices.once(
                ("manage_threads", forum.id),
                "cannot tag posts in channel %s (%s): the bot needs the Manage Threads permission there",
                forum.id,
                forum.name,
            )
            notes.append(text(locale, "show.no_manage_threads"))
        return notes

    @_moderators
    @labels.command(name=_T("history"), description=_T("Show the latest changes to the label set"))
    @_where_options()
    async def history(
        self, interaction: discord.Interaction, scope: Choice[str] | None = None, channel: ChannelOption | None = None
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, scope, channel)
        if target is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            entries = await app.store.history(target.guild_id, target.channel_id, limit=10)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        if not entries:
            return await refuse(interaction, text(locale, "history.empty", where=_where(locale, target)))
        lines = []
        for entry in entries:
            line = text(
                locale,
                "history.line",
                version=entry.version,
                action=text(locale, f"action.{entry.action}"),
                user=f"<@{entry.user_id}>" if entry.user_id else "?",
                when=f"<t:{int(entry.at)}:R>",
            )
            if entry.reverted:
                line += " " + text(locale, "history.reverted")
            if entry.kind == "style":
                what = text(locale, f"style.{entry.style}") if entry.style else text(locale, "history.style_reset")
                detail = text(locale, "history.style", style=what)
            else:
                detail = _label_list(entry.labels, 300) if entry.labels is not None else "—"
            lines.append(f"**{line}**\n{detail}")
        embed = discord.Embed(
            title=text(locale, "history.title", where=_title_where(locale, target))[:256],
            description="\n".join(lines)[:4096],
        )
        await interaction.followup.send(embed=embed, ephemeral=True)

    @labels.command(name=_T("stats"), description=_T("Chart how often each label came first here"))
    @_where_options(scopes=None)
    @app_commands.rename(days=_T("days"))
    @app_commands.describe(days=_T("Over how many days (default 30)"))
    async def stats(
        self,
        interaction: discord.Interaction,
        days: app_commands.Range[int, 1, 3650] = 30,
        channel: ChannelOption | None = None,
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, None, channel)
        if target is None:
            return
        if target.channel_id is None or target.personal:
            return await refuse(interaction, text(locale, "guild_only"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        since = time.time() - days * 86400
        try:
            source = await self._source(target)
            corrections = await app.store.corrections(target.guild_id, channel_ids=[target.channel_id], since=since)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        try:
            counts = await app.index.top_label_counts(target.guild_id, target.channel_id, since)
        except StorageError as e:  # the index unavailable: the corrections can still be told
            log.info("no label counts for /labels stats: %s", e)
            counts = {}
        if not counts and not corrections:
            return await refuse(interaction, text(locale, "stats.empty", days=days))
        where = _title_where(locale, target)
        parts = [text(locale, "stats.summary", where=where, days=days, count=sum(counts.values()))]
        file = discord.utils.MISSING
        if counts:
            rows = ordered_counts(
                counts, tuple(label_name(label) for label in source.labels), text(locale, "stats.other")
            )
            png = await asyncio.to_thread(
                render_chart, rows, text(locale, "stats.title", where=where, days=days), text(locale, "stats.axis")
            )
            parts.append("、".join(f"{escape(label, 40)} {count}" for label, count in rows))
            file = discord.File(io.BytesIO(png), filename="wakeru-stats.png")
        parts.append(self._corrections_text(locale, corrections))
        await interaction.followup.send("\n".join(parts)[:2000], file=file, ephemeral=True)

    @staticmethod
    def _corrections_text(locale: LocaleLike, corrections: Sequence[Correction]) -> str:
        summary = summarise(corrections)
        if summary.images == 0:
            return text(locale, "stats.no_corrections")
        lines = [
            text(
                locale,
                "stats.agreement",
                rate=f"{summary.agreement * 100:.0f}%",
                agreed=summary.agreed,
                count=summary.corrections,
                images=summary.images,
            )
        ]
        for (shown, chosen), count in summary.confusions[:5]:
            into = text(locale, "wrong.none") if chosen is None else chosen
            lines.append(text(locale, "stats.confusion", shown=escape(shown, 40), chosen=escape(into, 40), count=count))
        return "\n".join(lines)

    # ---- changing --------------------------------------------------------------------

    @_moderators
    @labels.command(name=_T("set"), description=_T("Replace the label set"))
    @_where_options()
    @app_commands.rename(labels=_T("labels"), from_tags=_T("from_tags"))
    @app_commands.describe(
        labels=_T("New labels, separated by commas, 、 or new lines (犬=🐕 gives a label its emoji)"),
        from_tags=_T("Use the forum's tag names as the labels"),
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        labels: str | None = None,
        scope: Choice[str] | None = None,
        channel: ChannelOption | None = None,
        from_tags: bool = False,
    ) -> None:
        def prepare(target: Target) -> tuple[str, ...]:
            locale = interaction.locale
            if from_tags:
                if labels:
                    raise _Refusal(text(locale, "from_tags.both"))
                forum = forum_of(target.channel)
                if forum is None or target.kind != "channel":
                    raise _Refusal(text(locale, "from_tags.not_forum"))
                if not forum.available_tags:
                    raise _Refusal(text(locale, "from_tags.none", channel=f"<#{forum.id}>"))
                return self._parse(interaction, _tag_labels(forum))
            if not labels:
                raise _Refusal(text(locale, "set.need_labels"))
            return self._parse(interaction, labels)

        await self._change(interaction, scope, channel, "set", prepare, lambda base, new: (new, None))

    @_moderators
    @labels.command(name=_T("add"), description=_T("Add labels to the set"))
    @_where_options()
    @app_commands.rename(labels=_T("labels"))
    @app_commands.describe(labels=_T("Labels to add"))
    async def add(
        self,
        interaction: discord.Interaction,
        labels: str,
        scope: Choice[str] | None = None,
        channel: ChannelOption | None = None,
    ) -> None:
        def compute(base: tuple[str, ...], new: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
            # by name: 犬=🐕 gives the label 犬 its emoji
            merged = _by_name(base)

            def changes(label: str) -> bool:
                have = merged.get(label_name(label))
                if have is None:
                    return True  # a new label
                return label_emoji(label) is not None and have != label  # a bare name keeps the emoji it has

            changed = [label for label in new if changes(label)]
            if not changed:
                raise _Refusal(text(interaction.locale, "add.nothing_new"))
            merged.update(_by_name(changed))
            limit = self.app.config.labels.max_count
            if len(merged) > limit:
                raise _Refusal(text(interaction.locale, "add.too_many", count=len(merged), limit=limit))
            return tuple(merged.values()), _quoted(interaction.locale, changed)

        await self._change(
            interaction, scope, channel, "add", lambda target: self._parse(interaction, labels, min_count=1), compute
        )

    @_moderators
    @labels.command(name=_T("remove"), description=_T("Remove labels from the set"))
    @_where_options()
    @app_commands.rename(labels=_T("labels"))
    @app_commands.describe(labels=_T("Labels to remove"))
    async def remove(
        self,
        interaction: discord.Interaction,
        labels: str,
        scope: Choice[str] | None = None,
        channel: ChannelOption | None = None,
    ) -> None:
        def compute(base: tuple[str, ...], gone: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
            names = {label_name(label) for label in gone}
            have = {label_name(label) for label in base}
            missing = [label for label in gone if label_name(label) not in have]
            if missing:
                raise _Refusal(
                    text(interaction.locale, "labels.not_in_set", labels=_quoted(interaction.locale, missing))
                )
            left = tuple(label for label in base if label_name(label) not in names)
            if len(left) < 2:
                raise _Refusal(text(interaction.locale, "remove.too_few", count=len(left)))
            return left, _quoted(interaction.locale, gone)

        await self._change(
            interaction, scope, channel, "remove", lambda target: self._parse(interaction, labels, min_count=1), compute
        )

    @_moderators
    @labels.command(name=_T("preset"), description=_T("Replace the label set with a preset"))
    @_where_options()
    @app_commands.rename(name=_T("name"))
    @app_commands.describe(name=_T("The preset to use"))
    async def preset(
        self,
        interaction: discord.Interaction,
        name: str,
        scope: Choice[str] | None = None,
        channel: ChannelOption | None = None,
    ) -> None:
        presets = self.app.config.labels.presets

        def check(target: Target) -> tuple[str, ...]:
            if name not in presets:
                raise _Refusal(
                    text(
                        interaction.locale,
                        "preset.unknown",
                        name=code_text(name),
                        names=", ".join(f"`{n}`" for n in presets) or "—",
                    )
                )
            return presets[name]

        await self._change(interaction, scope, channel, "preset", check, lambda base, labels: (labels, name))

    @preset.autocomplete("name")
    async def _preset_choices(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        presets = self.app.config.labels.presets
        return [
            Choice(name=f"{n} ({'、'.join(labels[:4])}…)"[:100], value=n)
            for n, labels in presets.items()
            if current.lower() in n.lower() and len(n) <= 100
        ][:25]

    @_moderators
    @labels.command(name=_T("reset"), description=_T("Drop this scope's own set and fall back to the inherited one"))
    @_where_options()
    async def reset(
        self, interaction: discord.Interaction, scope: Choice[str] | None = None, channel: ChannelOption | None = None
    ) -> None:
        await self._change(interaction, scope, channel, "reset", lambda target: None, lambda base, _: (None, None))

    @_moderators
    @labels.command(name=_T("undo"), description=_T("Undo the latest change to the label set"))
    @_where_options()
    async def undo(
        self, interaction: discord.Interaction, scope: Choice[str] | None = None, channel: ChannelOption | None = None
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, scope, channel)
        if target is None:
            return
        where = _where(locale, target)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            change = await app.store.undo(target.guild_id, target.channel_id, user_id=interaction.user.id)
        except NothingToUndo:
            return await refuse(interaction, text(locale, "undo.nothing", where=where))
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        app.label_changed("undo")
        if change.kind == "style":
            what = text(locale, f"style.{change.style}") if change.style else text(locale, "style.inherited")
            message = text(
                locale,
                "changed.undo_style",
                user=interaction.user.mention,
                where=where,
                version=change.version,
                reverted=change.detail or "?",
                style=what,
            )
            return await self._announce(interaction, target, message)
        await self._announce(interaction, target, await self._confirmation(interaction, "undo", change, target))

    @_moderators
    @labels.command(
        name=_T("auto"), description=_T("Turn automatic classification of posted images in this channel on or off")
    )
    @_where_options(scopes=None)
    @app_commands.rename(state=_T("state"))
    @app_commands.describe(state=_T("On or off"))
    @app_commands.choices(state=[Choice(name=_T("on"), value="on"), Choice(name=_T("off"), value="off")])
    async def auto(
        self, interaction: discord.Interaction, state: Choice[str], channel: ChannelOption | None = None
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, None, channel)
        if target is None:
            return
        if target.personal or target.channel_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await app.store.set_auto(
                target.guild_id, target.channel_id, state.value == "on", user_id=interaction.user.id
            )
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        shown = text(locale, f"state.{state.value}")
        await announce(
            interaction,
            text(locale, "auto.changed", user=interaction.user.mention, channel=f"<#{target.channel_id}>", state=shown),
        )

    @_moderators
    @labels.command(name=_T("style"), description=_T("How posted images are answered: embed, reaction, tags or none"))
    @_where_options(scopes=_SCOPES, scope_help=_STYLE_SCOPE_HELP)
    @app_commands.rename(style=_T("style"))
    @app_commands.describe(style=_T("embed: a reply; reaction: one emoji; tags: forum post tags; none: no answer"))
    @app_commands.choices(style=_STYLES)
    async def style(
        self,
        interaction: discord.Interaction,
        style: Choice[str],
        scope: Choice[str] | None = None,
        channel: ChannelOption | None = None,
    ) -> None:
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, scope, channel)
        if target is None:
            return
        if target.personal:
            return await refuse(interaction, text(locale, "guild_only"))
        forum = forum_of(target.channel)
        if style.value == "tags" and target.kind == "channel" and forum is None:
            return await refuse(interaction, text(locale, "style.tags_not_forum"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            change = await app.store.write_style(
                target.guild_id, target.channel_id, style.value, user_id=interaction.user.id
            )
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        app.label_changed("style")
        log.info(
            "style %s in guild %s scope %s by %s → v%s",
            style.value,
            target.guild_id,
            target.channel_id or "server",
            interaction.user.id,
            change.version,
        )
        message = text(
            locale,
            "changed.style",
            user=interaction.user.mention,
            where=_where(locale, target),
            version=change.version,
            style=text(locale, f"style.{style.value}"),
        )
        if style.value == "tags" and forum is not None:
            try:
                message += "\n" + "\n".join(self._forum_notes(locale, target, (await self._source(target)).labels))
            except StorageError as e:  # the change is saved; only the notes are missing
                log.info("no forum notes for the style change: %s", e)
        await self._announce(interaction, target, message.strip())

    # ---- helpers ---------------------------------------------------------------------

    def _parse(self, interaction: discord.Interaction, raw: str | list[str], min_count: int = 2) -> tuple[str, ...]:
        """Label text (split on commas, 、 and new lines), or a list of labels taken as they are (tag names)."""
        limits = self.app.config.labels
        items = split_labels(raw) if isinstance(raw, str) else raw
        try:
            labels = normalise_labels(
                items, max_count=limits.max_count, max_length=limits.max_length, min_count=min_count
            )
        except LabelError as e:
            raise _Refusal(label_error(interaction.locale, e)) from None
        guild = interaction.guild
        for label in labels:  # a custom emoji must be one this server has: the bot can only react with those
            emoji_id = custom_emoji_id(label_emoji(label) or "")
            if emoji_id is not None and guild is not None and guild.get_emoji(emoji_id) is None:
                raise _Refusal(text(interaction.locale, "emoji.not_here", label=escape(label_name(label), 60)))
        return labels

    async def _source(self, target: Target) -> LabelSource:
        app = self.app
        if target.personal:
            assert target.channel_id is not None
            return await resolve_personal(app.store, app.config, target.channel_id)
        return await resolve(app.store, app.config, target.guild_id, target.channel_id, target.parent_id)

    async def _target_or_refuse(
        self, interaction: discord.Interaction, scope: Choice[str] | None, channel: ChannelOption | None = None
    ) -> Target | None:
        """The scope a command is about, or None after refusing. A `channel:` option names it; inside a forum
        or media post, "channel" means the forum (a post is not managed on its own)."""
        locale = interaction.locale
        in_bots_server = interaction.guild_id is not None and interaction.is_guild_integration()
        # a DM, or a server the bot is not in (a member's own install): only their own set is theirs to manage
        kind = scope.value if scope is not None else ("channel" if in_bots_server else "me")
        if kind == "me":
            return Target("me", PERSONAL_SETS, interaction.user.id)
        if not in_bots_server or interaction.guild_id is None:
            await refuse(interaction, text(locale, "guild_only"))
            return None
        guild_id = interaction.guild_id
        if kind == "server":
            return Target("server", guild_id, None)
        if channel is not None:
            member = interaction.user
            if isinstance(member, discord.Member) and not channel.permissions_for(member).view_channel:
                await refuse(interaction, text(locale, "channel.hidden"))  # not even its labels or counts
                return None
            return Target("channel", guild_id, channel.id, None, channel)
        if interaction.channel_id is None:  # never fall back to the server set by accident
            await refuse(interaction, text(locale, "guild_only"))
            return None
        here = interaction.channel
        forum = forum_of(here)
        if forum is not None:
            return Target("channel", guild_id, forum.id, None, forum)
        return Target("channel", guild_id, interaction.channel_id, parent_id(here), here)

    async def _announce(self, interaction: discord.Interaction, target: Target, message: str) -> None:
        """A saved change: in the channel for everyone, except a member's own set (theirs alone)."""
        if target.personal:
            await interaction.followup.send(message[:2000], ephemeral=True)
        else:
            await announce(interaction, message)

    async def _confirmation(
        self,
        interaction: discord.Interaction,
        action: str,
        change: HistoryEntry,
        target: Target,
        changed: str | None = None,
    ) -> str:
        """The public announcement of a change that is already committed: who, what, the version this
        command wrote, and the labels posts are now ranked against. It must not fail."""
        app, locale = self.app, interaction.locale
        fields = dict(
            user=interaction.user.mention,
            where=_where(locale, target),
            version=change.version,
            reverted=change.detail or "?",
            changed=changed or "",
            preset=code_text(changed or ""),
        )
        labels, source = change.labels, None
        if labels is None:  # no set of its own now: say what it falls back to
            try:
                if target.personal:
                    source = LabelSource("default", app.config.labels.default)
                else:
                    source = await inherited(
                        app.store, app.config, target.guild_id, target.channel_id, target.parent_id
                    )
                labels = source.labels
            except StorageError:  # the change is saved; only this detail is missing
                labels = ()
        if action == "undo":
            key = "changed.undo" if change.labels is not None else "changed.undo_reset"
        else:
            key = "changed.reset" if change.labels is None else f"changed.{action}"
        head = text(locale, key, count=len(labels), source=describe_source(source, locale) if source else "—", **fields)
        return f"{head}\n{_label_list(labels, _MESSAGE_CHARS - len(head) - 1)}" if labels else head

    async def _change(
        self,
        interaction: discord.Interaction,
        scope: Choice[str] | None,
        channel: ChannelOption | None,
        action: str,
        prepare: Callable[[Target], P],
        compute: Callable[[tuple[str, ...], P], tuple[tuple[str, ...] | None, str | None]],
    ) -> None:
        """Cheap checks (permission, label text) answered at once and privately; then defer, read,
        compute the new set from the current one, write it with the version read, confirm."""
        app, locale = self.app, interaction.locale
        target = await self._target_or_refuse(interaction, scope, channel)
        if target is None:
            return
        try:
            prepared = prepare(target)
        except _Refusal as e:
            return await refuse(interaction, str(e))
        # private: a refusal below is the first followup, which keeps the deferral's privacy
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id, channel_id = target.guild_id, target.channel_id
        try:
            own = await app.store.get(guild_id, channel_id)
            if own is None and action == "reset":
                return await refuse(interaction, text(locale, "reset.nothing", where=_where(locale, target)))
            if own is not None:
                base = own.labels
            elif target.personal:
                base = app.config.labels.default
            else:
                base = (await inherited(app.store, app.config, guild_id, channel_id, target.parent_id)).labels
            labels, changed = compute(base, prepared)  # the new set (None = drop it) and what changed
            change = await app.store.write(
                guild_id,
                channel_id,
                labels,
                user_id=interaction.user.id,
                action=action,
                detail=changed if action == "preset" else None,
                expected_version=own.version if own else 0,
            )
        except _Refusal as e:
            return await refuse(interaction, str(e))
        except VersionConflict:
            return await refuse(interaction, text(locale, "conflict"))
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        app.label_changed(action)
        log.info(
            "labels %s in guild %s scope %s by %s → v%s",
            action,
            guild_id,
            "me" if target.personal else channel_id or "server",
            interaction.user.id,
            change.version,
        )
        await self._announce(
            interaction, target, await self._confirmation(interaction, action, change, target, changed)
        )
