"""Starting a worker: quiet libraries, the engine for a config, what the worker reports about
itself, and fault injection when (and only when) it is switched on."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from wakeru.config import Config
from wakeru.protocol import WorkerInfo

if TYPE_CHECKING:
    from model_worker.devtools.faults import Faults
    from model_worker.model.engine import Engine


def quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        if not verbose:  # network retries are explained by our own one-line error
            import huggingface_hub

            huggingface_hub.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - transformers missing is reported at load time
        pass


def load_engine(config: Config) -> Engine:
    """Load the adapter and start an engine; ModelLoadError propagates."""
    from model_worker.model.adapters import load_adapter
    from model_worker.model.engine import Engine

    return Engine(load_adapter(config.model), config)


def worker_info(config: Config, engine: Engine, *, name: str = "", host: str = "") -> WorkerInfo:
    adapter = engine.adapter
    return WorkerInfo(
        model=config.model.id,
        revision=config.model.revision or "",
        family=adapter.family,
        device=str(adapter.device),
        dtype=str(adapter.dtype).replace("torch.", ""),
        input_size=adapter.preprocessor.draft_size[0],
        embedding_size=adapter.embedding_size,
        pid=os.getpid(),
        name=name,
        host=host,
    )


def armed_faults() -> Faults | None:
    """Fault injection for tests and drills (model_worker.devtools.faults). The serving path does
    not even import it unless WAKERU_FAULTS is set; it then also needs WAKERU_ALLOW_FAULTS=1."""
    if not os.environ.get("WAKERU_FAULTS", "").strip():
        return None
    from model_worker.devtools.faults import Faults

    return Faults.from_env()
