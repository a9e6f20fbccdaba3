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
from bot.services.labelsets import auto_classify_enabled, inherited, parent_id, resolve
from bot.services.stats import ordered_counts, render_chart
from bot.store import HistoryEntry, NothingToUndo, StorageError, VersionConflict
from wakeru.labels import LabelError, parse_labels

log = logging.getLogger("wakeru.labels")

_SCOPES = [Choice(name=_T("channel"), value="channel"), Choice(name=_T("server"), value="server")]
_SCOPE_HELP = _T("Which label set: this channel's or the server's")
_LIST_CHARS = 3500  # an embed description holds 4,096
_MESSAGE_CHARS = 2000  # a message's content

P = TypeVar("P")  # what a change prepares before the deferral (the parsed labels, a preset…)


class _Refusal(Exception):
    """A mutation that must not happen; the message is already localised."""


def _where(locale: LocaleLike, channel_id: int | None) -> str:
    return text(locale, "where.channel", channel=f"<#{channel_id}>") if channel_id else text(locale, "where.server")


def _title_where(interaction: discord.Interaction, channel_id: int | None) -> str:
    """Embed titles cannot render <#id>: the channel's name instead."""
    if channel_id is None:
        return text(interaction.locale, "where.server")
    return "#" + escape(getattr(interaction.channel, "name", None) or str(channel_id), 100)


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


def _guild_id(interaction: discord.Interaction) -> int:
    """The server a /labels command came from. The group is guild_only, so Discord sends it from
    servers only; were one to come from elsewhere it is refused like a guild-only check would be."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()  # answered by the tree's error handler ("guild_only")
    return interaction.guild_id


_moderators = moderator_only(moderator_roles)


class LabelsCog(WakeruCog):
    """The /labels group: anyone may look; moderators change (and see the history)."""

    labels = app_commands.Group(
        name=_T("labels"),
        description=_T("Show and manage the label sets used to classify images"),
        guild_only=True,
        # no default_permissions: show and stats are for everyone (a default would hide the whole group);
        # the changes carry the moderator check instead
    )

    # ---- reading ---------------------------------------------------------------------

    @labels.command(name=_T("show"), description=_T("Show the labels used here"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def show(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        target = await self._target_or_refuse(interaction, scope)
        if target is None:
            return
        channel_id, parent_id = target
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            source = await resolve(app.store, app.config, guild_id, channel_id, parent_id)
            enabled = (
                None
                if channel_id is None
                else await auto_classify_enabled(app.store, app.config, guild_id, channel_id, parent_id)
            )
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        lines = [f"-# {describe_source(source, locale)}"]
        if source.kind != ("server" if channel_id is None else "channel"):
            lines.insert(0, text(locale, "show.inherited", source=describe_source(source, locale)))
        if enabled is not None:
            lines.append(text(locale, "show.auto", state=text(locale, "state.on" if enabled else "state.off")))
        embed = discord.Embed(
            title=text(locale, "show.title", where=_title_where(interaction, channel_id))[:256],
            description=_label_list(source.labels) + "\n\n" + "\n".join(lines),
        )
        await interaction.followup.send(embed=embed, ephemeral=True)

    @_moderators
    @labels.command(name=_T("history"), description=_T("Show the latest changes to the label set"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def history(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        target = await self._target_or_refuse(interaction, scope)
        if target is None:
            return
        channel_id = target[0]
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            entries = await app.store.history(guild_id, channel_id, limit=10)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        if not entries:
            return await refuse(interaction, text(locale, "history.empty", where=_where(locale, channel_id)))
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
            labels = _label_list(entry.labels, 300) if entry.labels is not None else "—"
            lines.append(f"**{line}**\n{labels}")
        embed = discord.Embed(
            title=text(locale, "history.title", where=_title_where(interaction, channel_id))[:256],
            description="\n".join(lines),
        )
        await interaction.followup.send(embed=embed, ephemeral=True)

    @labels.command(name=_T("stats"), description=_T("Chart how often each label came first here"))
    @app_commands.rename(days=_T("days"))
    @app_commands.describe(days=_T("Over how many days (default 30)"))
    async def stats(self, interaction: discord.Interaction, days: app_commands.Range[int, 1, 3650] = 30) -> None:
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        channel_id = interaction.channel_id
        if channel_id is None:
            return await refuse(interaction, text(locale, "guild_only"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            counts = await app.index.top_label_counts(guild_id, channel_id, time.time() - days * 86400)
            source = await resolve(app.store, app.config, guild_id, channel_id, parent_id(interaction.channel))
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        if not counts:
            return await refuse(interaction, text(locale, "stats.empty", days=days))
        rows = ordered_counts(counts, source.labels, text(locale, "stats.other"))
        where = _title_where(interaction, channel_id)
        png = await asyncio.to_thread(
            render_chart, rows, text(locale, "stats.title", where=where, days=days), text(locale, "stats.axis")
        )
        total = sum(counts.values())
        listed = "、".join(f"{escape(label, 40)} {count}" for label, count in rows)
        summary = text(locale, "stats.summary", where=where, days=days, count=total) + "\n" + listed
        await interaction.followup.send(
            summary[:2000], file=discord.File(io.BytesIO(png), filename="wakeru-stats.png"), ephemeral=True
        )

    # ---- changing --------------------------------------------------------------------

    @_moderators
    @labels.command(name=_T("set"), description=_T("Replace the label set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("New labels, separated by commas, 、 or new lines"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def set_(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        await self._change(
            interaction, scope, "set", lambda: self._parse(interaction, labels), lambda base, new: (new, None)
        )

    @_moderators
    @labels.command(name=_T("add"), description=_T("Add labels to the set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("Labels to add"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def add(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        def compute(base: tuple[str, ...], new: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
            added = [label for label in new if label not in base]
            if not added:
                raise _Refusal(text(interaction.locale, "add.nothing_new"))
            limit = self.app.config.labels.max_count
            if len(base) + len(added) > limit:
                raise _Refusal(text(interaction.locale, "add.too_many", count=len(base) + len(added), limit=limit))
            return base + tuple(added), _quoted(interaction.locale, added)

        await self._change(interaction, scope, "add", lambda: self._parse(interaction, labels, min_count=1), compute)

    @_moderators
    @labels.command(name=_T("remove"), description=_T("Remove labels from the set"))
    @app_commands.rename(labels=_T("labels"), scope=_T("scope"))
    @app_commands.describe(labels=_T("Labels to remove"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def remove(self, interaction: discord.Interaction, labels: str, scope: Choice[str] | None = None) -> None:
        def compute(base: tuple[str, ...], gone: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
            missing = [label for label in gone if label not in base]
            if missing:
                raise _Refusal(
                    text(interaction.locale, "labels.not_in_set", labels=_quoted(interaction.locale, missing))
                )
            left = tuple(label for label in base if label not in gone)
            if len(left) < 2:
                raise _Refusal(text(interaction.locale, "remove.too_few", count=len(left)))
            return left, _quoted(interaction.locale, gone)

        await self._change(interaction, scope, "remove", lambda: self._parse(interaction, labels, min_count=1), compute)

    @_moderators
    @labels.command(name=_T("preset"), description=_T("Replace the label set with a preset"))
    @app_commands.rename(name=_T("name"), scope=_T("scope"))
    @app_commands.describe(name=_T("The preset to use"), scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def preset(self, interaction: discord.Interaction, name: str, scope: Choice[str] | None = None) -> None:
        presets = self.app.config.labels.presets

        def check() -> tuple[str, ...]:
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

        await self._change(interaction, scope, "preset", check, lambda base, labels: (labels, name))

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
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def reset(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        await self._change(interaction, scope, "reset", lambda: None, lambda base, _: (None, None))

    @_moderators
    @labels.command(name=_T("undo"), description=_T("Undo the latest change to the label set"))
    @app_commands.rename(scope=_T("scope"))
    @app_commands.describe(scope=_SCOPE_HELP)
    @app_commands.choices(scope=_SCOPES)
    async def undo(self, interaction: discord.Interaction, scope: Choice[str] | None = None) -> None:
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        target = await self._target_or_refuse(interaction, scope)
        if target is None:
            return
        channel_id, parent_id = target
        where = _where(locale, channel_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            change = await app.store.undo(guild_id, channel_id, user_id=interaction.user.id)
        except NothingToUndo:
            return await refuse(interaction, text(locale, "undo.nothing", where=where))
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        app.label_changed("undo")
        await announce(interaction, await self._confirmation(interaction, "undo", change, channel_id, parent_id))

    @_moderators
    @labels.command(
        name=_T("auto"), description=_T("Turn automatic classification of posted images in this channel on or off")
    )
    @app_commands.rename(state=_T("state"))
    @app_commands.describe(state=_T("On or off"))
    @app_commands.choices(state=[Choice(name=_T("on"), value="on"), Choice(name=_T("off"), value="off")])
    async def auto(self, interaction: discord.Interaction, state: Choice[str]) -> None:
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        target = await self._target_or_refuse(interaction, None)
        if target is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await app.store.set_auto(guild_id, target[0], state.value == "on", user_id=interaction.user.id)
        except StorageError as e:
            return await refuse(interaction, storage_error(locale, e))
        shown = text(locale, f"state.{state.value}")
        await announce(
            interaction,
            text(locale, "auto.changed", user=interaction.user.mention, channel=f"<#{target[0]}>", state=shown),
        )

    # ---- helpers ---------------------------------------------------------------------

    def _parse(self, interaction: discord.Interaction, raw: str, min_count: int = 2) -> tuple[str, ...]:
        limits = self.app.config.labels
        try:
            return parse_labels(raw, max_count=limits.max_count, max_length=limits.max_length, min_count=min_count)
        except LabelError as e:
            raise _Refusal(label_error(interaction.locale, e)) from None

    async def _target_or_refuse(
        self, interaction: discord.Interaction, scope: Choice[str] | None
    ) -> tuple[int | None, int | None] | None:
        """(scope channel id or None for the server, its parent for threads); None after refusing."""
        if scope is not None and scope.value == "server":
            return None, None
        if interaction.channel_id is None:  # never fall back to the server set by accident
            await refuse(interaction, text(interaction.locale, "guild_only"))
            return None
        return interaction.channel_id, parent_id(interaction.channel)

    async def _confirmation(
        self,
        interaction: discord.Interaction,
        action: str,
        change: HistoryEntry,
        channel_id: int | None,
        parent_id: int | None,
        changed: str | None = None,
    ) -> str:
        """The public announcement of a change that is already committed: who, what, the version this
        command wrote, and the labels posts are now ranked against. It must not fail."""
        app, locale = self.app, interaction.locale
        fields = dict(
            user=interaction.user.mention,
            where=_where(locale, channel_id),
            version=change.version,
            reverted=change.detail or "?",
            changed=changed or "",
            preset=code_text(changed or ""),
        )
        labels, source = change.labels, None
        if labels is None:  # no set of its own now: say what it falls back to
            try:
                source = await inherited(app.store, app.config, _guild_id(interaction), channel_id, parent_id)
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
        action: str,
        prepare: Callable[[], P],
        compute: Callable[[tuple[str, ...], P], tuple[tuple[str, ...] | None, str | None]],
    ) -> None:
        """Cheap checks (permission, label text) answered at once and privately; then defer, read,
        compute the new set from the current one, write it with the version read, confirm."""
        app, locale = self.app, interaction.locale
        guild_id = _guild_id(interaction)
        target = await self._target_or_refuse(interaction, scope)
        if target is None:
            return
        channel_id, parent_id = target
        try:
            prepared = prepare()
        except _Refusal as e:
            return await refuse(interaction, str(e))
        # private: a refusal below is the first followup, which keeps the deferral's privacy
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            own = await app.store.get(guild_id, channel_id)
            if own is None and action == "reset":
                return await refuse(interaction, text(locale, "reset.nothing", where=_where(locale, channel_id)))
            base = (
                own.labels if own else (await inherited(app.store, app.config, guild_id, channel_id, parent_id)).labels
            )
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
            channel_id or "server",
            interaction.user.id,
            change.version,
        )
        await announce(
            interaction, await self._confirmation(interaction, action, change, channel_id, parent_id, changed)
        )
