"""Warnings said once per process: a missing permission is worth one log line, not one per post."""

from __future__ import annotations

import logging
from collections.abc import Hashable

log = logging.getLogger("wakeru.notices")


class Notices:
    def __init__(self) -> None:
        self._said: set[Hashable] = set()

    def once(self, key: Hashable, message: str, *args: object) -> bool:
        """Log a warning the first time `key` comes up; True when it was logged now."""
        if key in self._said:
            return False
        self._said.add(key)
        log.warning(message, *args)
        return True

    def said(self, key: Hashable) -> bool:
        return key in self._said
