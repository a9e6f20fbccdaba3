"""`python -m bot` (run the bot), `python -m bot sync [--guild ID]` (register the commands, then exit), and the
operator's tools: health, bench-queue, bench-index, export-corrections."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import discord
import yarl

from bot.app import App
from bot.face.client import WakeruClient, WakeruShardedClient, make_client
from bot.services import health
from bot.services.health import HealthState
from bot.services.metrics import MetricsServer
from bot.store import StorageError
from wakeru.config import Config, ConfigError, load_config
from wakeru.logs import setup_logging

log = logging.getLogger("wakeru.bot")

TOKEN_HELP = """\
DISCORD_TOKEN is not set. Wakeru needs its bot token to log in:
  1. Open https://discord.com/developers/applications, pick (or create) your application.
  2. Bot → Reset Token → copy it.
  3. export DISCORD_TOKEN=<the token>   (or put it in the environment of the service / container)
See the README, "Setting up the Discord application"."""

INVALID_TOKEN_HELP = """\
Discord refused DISCORD_TOKEN (401 Unauthorized): the token is wrong, was reset, or belongs to another app.
Get a new one at https://discord.com/developers/applications → your application → Bot → Reset Token,
and set DISCORD_TOKEN to it."""

SHARDING_HELP = {
    4010: "Discord refused this process's shard (gateway close 4010, invalid shard): discord.shard_ids must lie in "
    "0..shard_count-1, and every process of the bot must use the same discord.shard_count.",
    4011: "Discord requires sharding for this bot (gateway close 4011: too many servers for one connection): set "
    "discord.shard_count (a number, or auto for Discord's recommendation) and restart.",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bot", description="Wakeru: a Discord bot that sorts images into labels."
    )
    p.add_argument("--config", help="config file (default: $WAKERU_CONFIG or ./config.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("sync", help="register the slash commands with Discord, then exit")
    s.add_argument(
        "--guild",
        type=int,
        metavar="ID",
        help="only in this server (instant; global commands can take a while to appear)",
    )
    sub.add_parser("health", help="exit 0 if the running bot's heartbeat is fresh and its model worker is usable")
    b = sub.add_parser("bench-queue", help="measure the bot ↔ worker queue overhead (no Discord needed)")
    b.add_argument("--model", help="model id or local directory (default: model.id from the config)")
    b.add_argument("--requests", type=int, default=200)
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--json", action="store_true")
    b.add_argument("--transport", choices=["local", "redis"], help="override worker.transport")
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="redis: start this many `python -m model_worker serve` processes here (default 1)",
    )
    b.add_argument("--redis-url", help="override worker.redis_url")
    b.add_argument("--start-redis", action="store_true", help="redis: run a throwaway redis-server for the run")
    e = sub.add_parser(
        "export-corrections",
        help="write the pictures members corrected as a labelled folder (one sub-folder per label)",
    )
    e.add_argument("--guild", type=int, required=True, metavar="ID", help="the server whose corrections to export")
    e.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    i = sub.add_parser("bench-index", help="measure the image index (insert rate, size, query time, recall)")
    i.add_argument("--images", type=int, default=100_000, help="synthetic images in one guild (e.g. 1000000)")
    i.add_argument("--dim", type=int, default=768)
    i.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    i.add_argument("--queries", type=int, default=200)
    i.add_argument("--postgres-url", help="postgresql://… of a server with pgvector (see the module's docstring)")
    i.add_argument("--encode-ms", type=float, help="add this text-encoding time (python -m model_worker bench)")
    i.add_argument(
        "--data",
        choices=["random", "clustered"],
        default="random",
        help="random unit vectors (HNSW's hard case), or clusters around 1,000 centres (closer to real embeddings)",
    )
    i.add_argument("--singles", type=int, help="single add calls into the full index after the load (default 500)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--json", action="store_true")
    return p


def use_endpoints(config: Config) -> None:
    """Point discord.py at a REST proxy or another gateway (the tests' fake Discord)."""
    if config.discord.api_base:
        base = config.discord.api_base
        discord.http.Route.BASE = base if base.endswith("/api/v10") else base + "/api/v10"
    if config.discord.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.discord.gateway_url)


async def run(config: Config, token: str) -> int:
    try:
        app = await App.open(config)
    except StorageError as e:
        print(f"error: storage.url: {e}", file=sys.stderr)
        return 2
    message_content = True
    client: WakeruClient | WakeruShardedClient | None = None
    stopping = asyncio.Event()
    shutdown: asyncio.Task[None] | None = None

    async def graceful_stop() -> None:
        # the gateway stays up while in-flight work finishes, so its answers can still be sent
        await app.drain(config.service.shutdown_grace_s)
        if client is not None and not client.is_closed():
            await client.close()

    def request_stop() -> None:
        nonlocal shutdown
        if stopping.is_set():
            return
        stopping.set()
        log.info(
            "stop requested: no new work; in-flight images get up to %.0f s (service.shutdown_grace_s)",
            config.service.shutdown_grace_s,
        )
        shutdown = asyncio.ensure_future(graceful_stop())

    def state() -> HealthState:
        transport = app.transport
        return {
            "connected": client is not None and client.is_ready() and not client.is_closed(),
            "worker": transport.state,
            "failure": transport.failure,
            "worker_pid": transport.info.pid if transport.info else None,
            "restarts": transport.restarts,
            "in_flight": transport.in_flight,
            "stopping": stopping.is_set(),
            "transport": config.worker.transport,
            "workers": transport.live_workers,
        }

    server = None
    if config.service.metrics_port:
        server = MetricsServer(config.service.metrics_host, config.service.metrics_port, state)
        try:
            await server.start()
        except OSError as e:
            print(
                f"error: service.metrics_port: cannot listen on {config.service.metrics_host}:"
                f"{config.service.metrics_port}: {e.strerror or e}",
                file=sys.stderr,
            )
            await app.close()
            return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    beat = asyncio.ensure_future(health.heartbeat(Path(config.storage.health_file), state))
    try:
        while not stopping.is_set():
            client = make_client(app, config, message_content=message_content)
            try:
                async with client:
                    await client.start(token)
                break
            except discord.LoginFailure:
                print(INVALID_TOKEN_HELP, file=sys.stderr)
                return 2
            except discord.ConnectionClosed as e:
                if e.code not in SHARDING_HELP:
                    raise
                print(f"error: {SHARDING_HELP[e.code]}", file=sys.stderr)
                return 2
            except discord.PrivilegedIntentsRequired:
                if not message_content:
                    raise
                log.warning(
                    "Discord refused the Message Content intent (gateway close 4014). Continuing without "
                    'it: /classify and the "Classify image" menu work, but posted images are not '
                    "classified automatically. Enable it under Bot → Privileged Gateway Intents → Message "
                    "Content Intent in the Developer Portal, then restart."
                )
                message_content = False
        if shutdown is not None:
            await shutdown
        return 0
    finally:
        beat.cancel()
        if server is not None:
            await server.close()
        await app.close()
        log.info("stopped")


async def sync(config: Config, token: str, guild_id: int | None) -> int:
    client = WakeruClient(None)
    async with client:
        try:
            await client.login(token)
        except discord.LoginFailure:
            print(INVALID_TOKEN_HELP, file=sys.stderr)
            return 2
        try:
            if guild_id is not None:
                guild = discord.Object(id=guild_id)
                client.tree.copy_global_to(guild=guild)
                commands = await client.tree.sync(guild=guild)
            else:
                commands = await client.tree.sync()
        except discord.Forbidden:
            print(
                f"error: Discord refused to register commands{f' in server {guild_id}' if guild_id else ''}: "
                "invite the bot with the applications.commands scope (see README)",
                file=sys.stderr,
            )
            return 1
        except discord.HTTPException as e:
            print(f"error: Discord rejected the command definitions: {e}", file=sys.stderr)
            return 1
    names = ", ".join(sorted(c.name for c in commands))
    where = f"server {guild_id} (visible at once)" if guild_id else "all servers (may take up to an hour to appear)"
    print(f"registered {len(commands)} commands in {where}: {names}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench-index":  # needs no config: a synthetic guild in the stores it is pointed at
        from bot.tools.bench_index import run as bench_index

        return bench_index(args)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    setup_logging(config.service.log_format, logging.DEBUG if args.verbose else logging.INFO, process="bot")
    logging.getLogger("discord").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.command == "health":
        ok, message = health.check(Path(config.storage.health_file), config.service)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.command == "bench-queue":
        from bot.tools.bench_queue import run as bench_queue

        worker = {
            k: v
            for k, v in (("transport", "redis" if args.start_redis else args.transport), ("redis_url", args.redis_url))
            if v
        }
        if args.model or worker:
            config = config.with_overrides(
                **({"model": {"id": args.model}} if args.model else {}), **({"worker": worker} if worker else {})
            )
        return bench_queue(
            config,
            max(1, args.requests),
            max(1, args.concurrency),
            args.json,
            workers=max(1, args.workers),
            start_redis=args.start_redis,
        )
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print(TOKEN_HELP, file=sys.stderr)
        return 2
    use_endpoints(config)
    if args.command == "sync":
        return asyncio.run(sync(config, token, args.guild))
    if args.command == "export-corrections":
        from bot.tools.export_corrections import run as export_corrections

        return export_corrections(config, token, args.guild, args.out_dir)
    return asyncio.run(run(config, token))
