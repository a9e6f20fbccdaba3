"""The /labels permission rule is declared as an app_commands check on every command that changes a
set (and on history), so discord.py refuses before the command body runs; the tree's one error handler
answers it. The flows against the fake Discord (test_discord_flows.py) prove the refusals end to end."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest
from discord import app_commands

from bot.face.checks import NotModerator, moderator_only, refusal_key, requested_scope
from bot.face.client import WakeruClient


async def test_every_changing_labels_command_carries_the_moderator_check():
    client = WakeruClient(None)
    await client.setup_hook()
    group = client.tree.get_command("labels")
    assert isinstance(group, app_commands.Group)
    checked = {c.name for c in group.commands if c.checks}
    assert checked == {"history", "set", "add", "remove", "preset", "reset", "undo", "auto", "style"}
    assert {c.name for c in group.commands} - checked == {"show", "stats"}  # anyone may look
    assert not client.tree.get_command("classify").checks  # anyone may classify
    index = client.tree.get_command("index")
    checked = {c.name for c in index.commands if c.checks}
    assert checked == {"enable", "disable", "backfill", "reposts"}  # forget checks `user:` itself
    assert not client.tree.get_command("search").checks


def _interaction(*, scope=None, perms: discord.Permissions, roles=(), guild_id: int | None = 1):
    return SimpleNamespace(
        namespace=SimpleNamespace(scope=scope),
        permissions=perms,
        user=SimpleNamespace(_roles=list(roles), roles=[]),
        guild_id=guild_id,
    )


@pytest.mark.parametrize(
    ("scope", "perms", "roles", "refused"),
    [
        (None, discord.Permissions(manage_channels=True), (), None),
        (None, discord.Permissions.none(), (), "denied.channel"),
        ("server", discord.Permissions(manage_channels=True), (), "denied.server"),  # the server needs Manage Server
        (app_commands.Choice(name="server", value="server"), discord.Permissions(manage_guild=True), (), None),
        ("server", discord.Permissions.none(), (42,), None),  # a moderator role
        ("server", discord.Permissions(administrator=True), (), None),
    ],
)
def test_the_rule_follows_the_scope_the_command_changes(scope, perms, roles, refused):
    interaction = _interaction(scope=scope, perms=perms, roles=roles)
    assert requested_scope(interaction) == ("server" if getattr(scope, "value", scope) == "server" else "channel")
    assert refusal_key(interaction, requested_scope(interaction), (42,)) == refused
    predicate = moderator_only(lambda _: (42,))(lambda: None).__discord_app_commands_checks__[0]
    if refused is None:
        assert predicate(interaction) is True
    else:
        with pytest.raises(NotModerator) as caught:
            predicate(interaction)
        assert caught.value.key == refused


def test_a_members_own_set_needs_no_permission():
    interaction = _interaction(scope="me", perms=discord.Permissions.none())
    assert requested_scope(interaction) == "me"
    assert refusal_key(interaction, "me", ()) is None
    # in a DM the check lets the command answer (only scope:me exists there; the others say "servers only")
    assert refusal_key(_interaction(perms=discord.Permissions.none(), guild_id=None), "channel", ()) is None
    predicate = moderator_only(lambda _: ())(lambda: None).__discord_app_commands_checks__[0]
    assert predicate(interaction) is True


def test_a_channel_option_is_checked_with_the_members_permissions_there():
    """Discord resolves a channel option with the member's permissions in that channel: those decide."""
    predicate = moderator_only(lambda _: ())(lambda: None).__discord_app_commands_checks__[0]
    here_yes = _interaction(perms=discord.Permissions(manage_channels=True))
    here_yes.namespace.channel = SimpleNamespace(id=5, permissions=discord.Permissions.none())
    with pytest.raises(NotModerator):
        predicate(here_yes)  # a moderator here, not there
    here_no = _interaction(perms=discord.Permissions.none())
    here_no.namespace.channel = SimpleNamespace(id=5, permissions=discord.Permissions(manage_channels=True))
    assert predicate(here_no) is True
