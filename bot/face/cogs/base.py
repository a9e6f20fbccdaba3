"""What every Wakeru cog holds: the App (config, label store, classifier, limiter) it serves."""

from __future__ import annotations

from discord.ext import commands

from bot.app import App


class WakeruCog(commands.Cog):
    def __init__(self, app: App | None):
        self._app = app  # None: the commands are only being registered (`python -m bot sync`)

    @property
    def app(self) -> App:
        if self._app is None:
            raise RuntimeError("Wakeru's commands run only in a running bot (this client only syncs them)")
        return self._app
