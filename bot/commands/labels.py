"""/labels: show and manage the label set of a channel (or thread) or of the whole server.

Every mutating subcommand checks permissions at run time (permissions.py), reads
the current version and writes with it, so two moderators cannot overwrite each
other unnoticed (VersionConflict).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _T

from wakeru.labels import LabelError, normalise_labels, parse_labels

from ..i18n import label_error, text
from ..labelsets import auto_classify_enabled, inherited, resolve
from ..permissions import refusal_key
from ..render import escape
from ..storage import NothingToUndo, StorageError, VersionConflict
from .classify import refuse

log = logging.getLogger("wakeru.labels")

_SCOPES = [Choice(name=_T("channel"), value="channel"), Choice(name=_T("server"), value="server")]
_SCOPE_HELP = _T("Which label set: this channel's or the server's")
_LIST_CHARS = 3500  # an embed description holds 4,096


class _Refusal(Exception):
    """A mutation that must not happen; the message is already localised."""


def _target(interaction: discord.Interaction, scope: Choice[str] | None) -> tuple[int | None, int | None]:
    """(scope channel id or None for the server, its parent channel id for threads)."""
    if scope is not None and scope.value == "server":
        return None, None
    channel = interaction.channel
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    return interaction.channel_id, parent


def _where(locale, channel_id: int | None) -> str:
    return text(locale, "where.channel", channel=f"<#{channel_id}>") if channel_id else text(locale, "where.server")


def _title_where(interaction: discord.Interaction, channel_id: int | None) -> str:
    """Embed titles cannot render <#id>: the channel's name instead."""
    if channel_id is None:
        return text(interaction.locale, "where.server")
    return "#" + escape(getattr(interaction.channel, "name", None) or str(channel_id), 100)


def _label_list(labels: tuple[str, ...]) -> str:
    joined = "、".join(escape(label, 60) for label in labels)
    return joined if len(joined) <= _LIST_CHARS else joined[:_LIST_CHARS] + "…"


def _quoted(labels) -> str:
    return "、".join(f"「{escape(label, 60)}」" for label in labels)


class LabelsGroup(app_commands.Group):
    def __init__(self):
        super().__init__(name=_T("labels"), description=_T("Show and manage the label sets used to classify images"),
                         guild_only=True, default_permissions=discord.Permissions(manage_channels=True))

    # ---- reading ---------------------------------------------------------------------

    @app_commands.command(name=_T("show"), description=_T("Show the labels used here"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def show(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = interaction.client.app, interaction.locale
        channel_id, parent_id = _target(interaction, scope)
        if channel_id is None:
            source = await resolve(app.store, app.config, interaction.guild_id, None, None)
        else:
            source = await resolve(app.store, app.config, interaction.guild_id, channel_id, parent_id)
        embed = discord.Embed(title=text(locale, "show.title", where=_title_where(interaction, channel_id))[:256],
                              description=_label_list(source.labels))
        lines = [f"-# {source.describe(locale)}"]
        own = source.kind == ("server" if channel_id is None else "channel")
        if not own:
            lines.insert(0, text(locale, "show.inherited", source=source.describe(locale)))
        if channel_id is not None:
            enabled = await auto_classify_enabled(app.store, app.config, interaction.guild_id, channel_id, parent_id)
            lines.append(text(locale, "show.auto", state=text(locale, "state.on" if enabled else "state.off")))
        embed.description += "\n\n" + "\n".join(lines)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name=_T("history"), description=_T("Show the latest changes to the label set"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def history(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = interaction.client.app, interaction.locale
        channel_id, _ = _target(interaction, scope)
        if not await self._allowed(interaction, channel_id):  # who changed what is for moderators
            return
        entries = await app.store.history(interaction.guild_id, channel_id, limit=10)
        where = _where(locale, channel_id)
        if not entries:
            return await interaction.response.send_message(text(locale, "history.empty", where=where), ephemeral=True)
        lines = []
        for e in entries:
            line = text(locale, "history.line", version=e.version, action=text(locale, f"action.{e.action}"),
                        user=f"<@{e.user_id}>" if e.user_id else "?", when=f"<t:{int(e.at)}:R>")
            if e.reverted:
                line += " " + text(locale, "history.reverted")
            labels = _label_list(e.labels) if e.labels is not None else "—"
            lines.append(f"**{line}**\n{labels[:300]}")
        embed = discord.Embed(title=text(locale, "history.title", where=_title_where(interaction, channel_id))[:256],
                              description="\n".join(lines))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ---- changing --------------------------------------------------------------------

    @app_commands.command(name=_T("set"), description=_T("Replace the label set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("New labels, separated by commas, 、 or new lines"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def set_(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        def compute(base):
            return self._parse(interaction, labels), None
        await self._change(interaction, scope, "set", compute)

    @app_commands.command(name=_T("add"), description=_T("Add labels to the set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("Labels to add"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def add(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        def compute(base):
            new = self._parse(interaction, labels, min_count=1)
            added = [label for label in new if label not in base]
            if not added:
                raise _Refusal(text(interaction.locale, "add.nothing_new"))
            return self._checked(interaction, base + tuple(added)), _quoted(added)
        await self._change(interaction, scope, "add", compute)

    @app_commands.command(name=_T("remove"), description=_T("Remove labels from the set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("Labels to remove"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def remove(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        def compute(base):
            gone = self._parse(interaction, labels, min_count=1)
            missing = [label for label in gone if label not in base]
            if missing:
                raise _Refusal(text(interaction.locale, "labels.not_in_set", labels=_quoted(missing)))
            return self._checked(interaction, tuple(label for label in base if label not in gone)), _quoted(gone)
        await self._change(interaction, scope, "remove", compute)

    @app_commands.command(name=_T("preset"), description=_T("Replace the label set with a preset"))
    @app_commands.rename(name=_T("name"), scope=_T("scope"))
    @app_commands.describe(name=_T("The preset to use"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def preset(self, interaction: discord.Interaction, name: str, scope: Choice[str] | None = None) -> None:
        presets = interaction.client.app.config.labels.presets

        def compute(base):
            if name not in presets:
                raise _Refusal(text(interaction.locale, "preset.unknown", name=escape(name, 50),
                                    names=", ".join(f"`{n}`" for n in presets) or "—"))
            return self._checked(interaction, presets[name]), name
        await self._change(interaction, scope, "preset", compute)

    @preset.autocomplete("name")
    async def _preset_choices(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        presets = interaction.client.app.config.labels.presets
        return [Choice(name=f"{n} ({'、'.join(labels[:4])}…)"[:100], value=n)
                for n, labels in presets.items() if current.lower() in n.lower()][:25]

    @app_commands.command(name=_T("reset"), description=_T("Drop this scope's own set and fall back to the inherited one"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def reset(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        def compute(base):
            return None, None
        await self._change(interaction, scope, "reset", compute)

    @app_commands.command(name=_T("undo"), description=_T("Undo the latest change to the label set"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def undo(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = interaction.client.app, interaction.locale
        channel_id, parent_id = _target(interaction, scope)
        if not await self._allowed(interaction, channel_id):
            return
        where = _where(locale, channel_id)
        try:
            after = await app.store.undo(interaction.guild_id, channel_id, user_id=interaction.user.id)
        except NothingToUndo:
            return await refuse(interaction, text(locale, "undo.nothing", where=where))
        except StorageError as e:
            return await refuse(interaction, text(locale, "storage_error", detail=str(e)))
        latest = (await app.store.history(interaction.guild_id, channel_id, limit=1))[0]
        app.label_changes += 1
        if after is None:
            source = await inherited(app.store, app.config, interaction.guild_id, channel_id, parent_id)
            message = text(locale, "changed.undo_reset", where=where, reverted=latest.detail,
                           source=source.describe(locale))
        else:
            message = text(locale, "changed.undo", where=where, reverted=latest.detail, version=after.version)
        await interaction.response.send_message(message)

    @app_commands.command(name=_T("auto"),
                          description=_T("Turn automatic classification of posted images in this channel on or off"))
    @app_commands.rename(state=_T("state"))
    @app_commands.describe(state=_T("On or off"))
    @app_commands.choices(state=[Choice(name=_T("on"), value="on"), Choice(name=_T("off"), value="off")])
    async def auto(self, interaction: discord.Interaction, state: Choice[str]) -> None:
        app, locale = interaction.client.app, interaction.locale
        if not await self._allowed(interaction, interaction.channel_id):
            return
        try:
            await app.store.set_auto(interaction.guild_id, interaction.channel_id, state.value == "on",
                                     user_id=interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, text(locale, "storage_error", detail=str(e)))
        shown = text(locale, f"state.{state.value}")
        await interaction.response.send_message(
            text(locale, "auto.changed", channel=f"<#{interaction.channel_id}>", state=shown))

    # ---- helpers ---------------------------------------------------------------------

    def _parse(self, interaction: discord.Interaction, raw: str, min_count: int = 2) -> tuple[str, ...]:
        limits = interaction.client.app.config.labels
        try:
            return parse_labels(raw, max_count=limits.max_count, max_length=limits.max_length, min_count=min_count)
        except LabelError as e:
            raise _Refusal(label_error(interaction.locale, e)) from None

    def _checked(self, interaction: discord.Interaction, labels: tuple[str, ...]) -> tuple[str, ...]:
        limits = interaction.client.app.config.labels
        try:
            return normalise_labels(labels, max_count=limits.max_count, max_length=limits.max_length, min_count=2)
        except LabelError as e:
            raise _Refusal(label_error(interaction.locale, e)) from None

    async def _allowed(self, interaction: discord.Interaction, channel_id: int | None) -> bool:
        key = refusal_key(interaction, "channel" if channel_id else "server",
                          interaction.client.app.config.discord.moderator_role_ids)
        if key is not None:
            await refuse(interaction, text(interaction.locale, key))
            return False
        return True

    async def _change(self, interaction: discord.Interaction, scope: Choice[str] | None, action: str,
                      compute: Callable[[tuple[str, ...]], tuple[tuple[str, ...] | None, str | None]]) -> None:
        """Permission check → read → compute the new set → versioned write → confirmation."""
        app, locale = interaction.client.app, interaction.locale
        guild_id = interaction.guild_id
        channel_id, parent_id = _target(interaction, scope)
        if not await self._allowed(interaction, channel_id):
            return
        where = _where(locale, channel_id)
        try:
            own = await app.store.get(guild_id, channel_id)
            if own is None and action == "reset":
                return await refuse(interaction, text(locale, "reset.nothing", where=where))
            base = own.labels if own else (await inherited(app.store, app.config, guild_id, channel_id,
                                                           parent_id)).labels
            labels, changed = compute(base)  # the new set (None = drop it) and what changed, for the reply
            after = await app.store.write(guild_id, channel_id, labels, user_id=interaction.user.id, action=action,
                                          detail=changed if action == "preset" else None,
                                          expected_version=own.version if own else 0)
        except _Refusal as e:
            return await refuse(interaction, str(e))
        except VersionConflict:
            return await refuse(interaction, text(locale, "conflict"))
        except StorageError as e:
            return await refuse(interaction, text(locale, "storage_error", detail=str(e)))
        app.label_changes += 1
        log.info("labels %s in guild %s scope %s by %s → %s", action, guild_id, channel_id or "server",
                 interaction.user.id, after.version if after else "reset")
        if after is None:
            source = await inherited(app.store, app.config, guild_id, channel_id, parent_id)
            history = await app.store.history(guild_id, channel_id, limit=1)
            message = text(locale, "changed.reset", where=where, version=history[0].version,
                           source=source.describe(locale))
        else:
            message = text(locale, f"changed.{action}", where=where, version=after.version, count=len(after.labels),
                           changed=changed or "", preset=changed or "")
        await interaction.response.send_message(message)
