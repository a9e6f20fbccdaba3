"""Application commands: /classify, the "Classify image" context menu and the /labels group."""

from __future__ import annotations

from discord import app_commands

from bot.face.cogs.classify import classify_command, classify_message_menu, refuse
from bot.face.cogs.labels import LabelsGroup


def add_commands(tree: app_commands.CommandTree) -> None:
    tree.add_command(classify_command)
    tree.add_command(classify_message_menu)
    tree.add_command(LabelsGroup())


__all__ = ["add_commands", "refuse"]
