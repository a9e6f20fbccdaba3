"""Shared fixtures: offline Hugging Face, tiny local checkpoints, a tiny trained model."""

from __future__ import annotations

import os
import tempfile

# Before anything imports transformers/huggingface_hub: no network, a private cache
# (remote-code modules land there), no tokenizer thread pools.
_HF_HOME = tempfile.mkdtemp(prefix="wakeru-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The developer's own overrides must not leak into the tests.
for _name in [n for n in os.environ if n.startswith("WAKERU_") and ("__" in n or n == "WAKERU_CONFIG")]:
    del os.environ[_name]


def _bytecode_cache() -> None:
    """With PYTHONDONTWRITEBYTECODE set (as in the Dockerfile, and on machines configured like it)
    nothing keeps compiled bytecode, so every process the tests start (dozens of bots and workers)
    compiles the sources of torch, transformers and discord.py again: about 7 s more for each model
    worker. Keep it in the test cache instead (tests/support/model_cache.py: outside the repository
    and the virtual environment, which stay untouched), for this process and the processes it starts.
    Nothing changes when bytecode is written as usual, when PYTHONPYCACHEPREFIX is set already, or
    with WAKERU_TEST_CACHE=off."""
    import sys

    from tests.support.model_cache import cache_root

    root = cache_root()
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX") or root is None:
        return
    prefix = str(root / "pycache")
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


_bytecode_cache()

# Hypothesis keeps caches (Unicode tables, examples) under ./.hypothesis unless told otherwise:
# a temporary home keeps the repository clean for every fuzz test at once.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    import atexit
    import shutil

    from hypothesis.configuration import set_hypothesis_home_dir

    _HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="wakeru-hypothesis-")
    set_hypothesis_home_dir(_HYPOTHESIS_HOME)
    atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.support.postgres_server import pgvector_url, postgres_server, postgres_url  # noqa: E402,F401
from wakeru.config import Config, load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """family → directory of a tiny random-weight checkpoint saved with save_pretrained (built once per
    version of the code that builds them, then copied from the cache: see tests/support/model_cache.py)."""
    from tests.support.model_cache import cached_checkpoints

    return cached_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A tiny SiglipModel trained for under a minute on coloured shapes (tests/support/shapes.py); trained
    once per version of the code that trains it, then copied from the cache (tests/support/model_cache.py)."""
    from tests.support.model_cache import cached_trained_model

    return cached_trained_model(tmp_path_factory.mktemp("trained") / "siglip-shapes")


@pytest.fixture(scope="session")
def stub_model(tmp_path_factory) -> Path:
    """A model directory for the torch-free stand-in worker (tests/support/stub_worker.py)."""
    from tests.support.stub_worker import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("stub") / "stub-model")


def make_config(model_path: Path | str | None = None, **sections) -> Config:
    """The default config (not ./config.yaml, not the environment) with overrides."""
    config = load_config(path=REPO / "config.yaml", env={})
    model = dict(sections.pop("model", {}))
    if model_path is not None:
        model.setdefault("id", str(model_path))
    if model:
        sections["model"] = model
    return config.with_overrides(**sections) if sections else config
