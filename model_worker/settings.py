"""What the CLI and its subcommands share: the usage error and the config a command runs with."""

from __future__ import annotations

import argparse

from wakeru.config import Config, load_config


class UsageError(Exception):
    """Reported as one line, exit status 2."""


def resolve_config(args: argparse.Namespace) -> Config:
    """The config file (--config, $WAKERU_CONFIG or ./config.yaml) with --model/--device/--dtype applied."""
    config = load_config(args.config)
    overrides = {k: v for k, v in (("id", args.model), ("device", args.device), ("dtype", args.dtype)) if v}
    return config.with_overrides(model=overrides) if overrides else config
