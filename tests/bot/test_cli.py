"""`python -m bot`: token checks, `sync`, `health`, and what a misconfiguration prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bot.services import health
from tests.conftest import REPO
from tests.support.bot_process import BotProcess
from tests.support.fake_discord import FakeDiscord

pytestmark = pytest.mark.slow  # each test runs `python -m bot` as a process


def _bot(*args, env=None, cwd=None, module="bot"):
    """`python -m bot …`; module="tests.support.stub_bot": the same with the stand-in model worker."""
    full = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full, capture_output=True, text=True, timeout=60
    )


def test_without_a_token_it_exits_at_once_and_says_where_to_get_one():
    started = time.monotonic()
    out = _bot()
    assert out.returncode == 2
    assert "DISCORD_TOKEN is not set" in out.stderr and "discord.com/developers/applications" in out.stderr
    assert time.monotonic() - started < 30  # no model is loaded first
    assert _bot(env={"DISCORD_TOKEN": "   "}).returncode == 2


def test_an_invalid_config_names_the_key():
    out = _bot(env={"DISCORD_TOKEN": "x", "WAKERU_DISCORD__AUTO_CLASSIFY": "sometimes"})
    assert (
        out.returncode == 2 and "discord.auto_classify" in out.stderr and "WAKERU_DISCORD__AUTO_CLASSIFY" in out.stderr
    )


def test_an_invalid_token_exits_with_guidance_before_loading_a_model(tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(fake, tmp_path / "no-model", tmp_path, DISCORD_TOKEN="wrong")
        out = bot.run()
        assert out.returncode == 2, out.stderr
        assert "refused DISCORD_TOKEN" in out.stderr and "Reset Token" in out.stderr
        assert "model worker started" not in out.stderr
        assert fake.identify_payloads == []


def test_sync_registers_localised_commands_in_one_guild_or_globally(tmp_path):
    with FakeDiscord() as fake:
        bot = BotProcess(fake, tmp_path / "unused", tmp_path)
        out = bot.run("sync", "--guild", str(fake.guild_id))
        assert out.returncode == 0, out.stderr
        assert "registered 6 commands" in out.stdout
        commands = {c["name"]: c for c in fake.synced_commands[fake.guild_id]}
        assert set(commands) == {"classify", "labels", "Classify image", "search", "index", "Find similar images"}
        assert commands["classify"]["name_localizations"] == {"ja": "分類"}
        assert commands["Classify image"]["name_localizations"] == {"ja": "画像を分類"}
        labels = commands["labels"]
        # everyone sees /labels (show, stats); the changes are checked on every call, not hidden
        assert labels.get("default_member_permissions") is None
        # /labels and the "Classify image" menu also come with a member's own install (scope:me, private answers)
        for name in ("labels", "Classify image"):
            assert sorted(commands[name]["contexts"]) == [0, 1, 2], name
            assert sorted(commands[name]["integration_types"]) == [0, 1], name
        assert commands["search"].get("contexts") in (None, [0]) or commands["search"].get("dm_permission") is False
        assert {o["name"] for o in labels["options"]} == {
            "show",
            "set",
            "add",
            "remove",
            "reset",
            "preset",
            "history",
            "undo",
            "auto",
            "stats",
            "style",
        }
        assert {o["name"] for o in commands["index"]["options"]} == {
            "enable",
            "disable",
            "status",
            "backfill",
            "forget",
            "reposts",
        }
        assert None not in fake.synced_commands
        out = bot.run("sync")
        assert out.returncode == 0 and len(fake.synced_commands[None]) == 6
        assert fake.identify_payloads == []  # sync never connects to the gateway


def test_health_reads_the_heartbeat(tmp_path):
    path = tmp_path / "health.json"
    assert health.check(path)[0] is False
    health.write(path, connected=True, worker="ready", failure=None)
    ok, message = health.check(path)
    assert ok and "worker ready" in message
    health.write(path, connected=True, worker="failed", failure="gated model")
    ok, message = health.check(path)
    assert not ok and "gated model" in message
    path.write_text(json.dumps({"time": time.time() - 3600, "worker": "ready"}))
    assert health.check(path)[0] is False
    out = _bot("health", env={"WAKERU_STORAGE__HEALTH_FILE": str(path)})
    assert out.returncode == 1 and "old" in out.stderr


def test_bench_index_reports_insert_rate_size_query_time_and_recall(tmp_path):
    out = _bot(
        "bench-index", "--images", "1500", "--dim", "32", "--queries", "10", "--store", "sqlite", "--json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    [figures] = __import__("json").loads(out.stdout)
    assert figures["store"] == "sqlite" and figures["images"] == 1500 and figures["recall_at_10"] == 1.0
    assert figures["insert_images_per_s"] > 0 and figures["bytes_per_image"] > 32 * 4  # the vector and its row
    assert 0 < figures["query_ms_p50"] <= figures["query_ms_p99"]
    assert figures["after_adds_recall_at_10"] == 1.0


def test_bench_index_on_postgres_measures_the_hnsw_scan_apart(pgvector_url):
    out = _bot(
        "bench-index", "--images", "1200", "--dim", "32", "--queries", "10", "--singles", "5", "--store", "postgres",
        "--postgres-url", pgvector_url, "--data", "clustered", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    [figures] = json.loads(out.stdout)
    assert figures["store"] == "postgres" and figures["data"] == "clustered" and figures["index_build_s"] >= 0
    assert figures["exact_max"] >= 1200 and figures["recall_at_10"] >= 0.99  # a guild this small is searched exactly
    assert 0 < figures["hnsw_query_ms_p50"] <= figures["hnsw_query_ms_p99"] and 0 < figures["hnsw_recall_at_10"] <= 1


def test_bench_index_clustered_data_sits_around_its_centres():
    import numpy as np

    from bot.tools.bench_index import _unit_vectors

    rng = np.random.default_rng(0)
    centres = _unit_vectors(rng, 3, 768, None)
    members = _unit_vectors(rng, 300, 768, centres)
    assert np.allclose(np.linalg.norm(members, axis=1), 1, atol=1e-5)
    nearest = (members @ centres.T).max(axis=1)
    assert abs(float(nearest.mean()) - 0.8) < 0.02  # CLUSTER_NOISE: cosine 0.8 from the centre
    assert abs(float((centres @ centres.T)[0, 1])) < 0.15  # random centres are near orthogonal


def test_bench_queue_reports_the_transport_overhead(stub_model):
    # the transport's own cost is measured around any worker: the stand-in (tests/support/stub_worker.py) starts at once
    out = _bot(
        "bench-queue",
        "--model",
        str(stub_model),
        "--requests",
        "6",
        "--concurrency",
        "3",
        "--json",
        module="tests.support.stub_bot",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    figures = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert figures["failed"] == 0 and figures["requests"] == 6
    assert figures["round_trip_p50_ms"] >= figures["worker_p50_ms"] > 0
    assert figures["queue_overhead_p50_ms"] >= 0 and figures["img_s"] > 0
