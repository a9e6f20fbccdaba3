"""Loading Hugging Face pieces with errors a moderator can act on.

Every failure becomes a ModelLoadError whose message is one line: what went wrong
with which model, and what to do about it (accept a gate and set HF_TOKEN, fix a
path, enable remote code, pick a smaller model…).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version

_TRANSFORMERS_5 = Version(transformers.__version__).major >= 5
_HAS_DTYPE_KW = Version(transformers.__version__) >= Version("4.56")


class ModelLoadError(Exception):
    """The model cannot be loaded; str() is a one-line reason with the fix."""


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no CUDA GPU is visible to PyTorch; use 'auto' or 'cpu'")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AMX or AVX512-BF16). Elsewhere bf16
    is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        # bf16 on GPUs that support it, and on CPUs with native bf16 (measured about 3×
        # faster than fp32 for ViT-B/16 with AMX: see docs/performance.md); fp32 elsewhere.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]
    if dtype == torch.float16 and device.type == "cpu":
        raise ModelLoadError("model.dtype float16 is not supported on CPU; use float32 or bfloat16")
    return dtype


def looks_local(model_id: str) -> bool:
    return os.path.isabs(model_id) or model_id.startswith(("./", "../", "~")) or Path(model_id).exists()


def dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    return {"dtype": dtype} if _HAS_DTYPE_KW else {"torch_dtype": dtype}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def explain(model_id: str, exc: BaseException) -> ModelLoadError:
    """Turn any exception raised while loading `model_id` into a ModelLoadError."""
    if isinstance(exc, ModelLoadError):
        return exc
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc)).lower()
    page = f"https://huggingface.co/{model_id}"
    if "GatedRepoError" in names or "gated repo" in text or ("restricted" in text and "access" in text):
        return ModelLoadError(
            f"{model_id} is a gated model: log in at {page}, accept its licence, create a read token at "
            "https://huggingface.co/settings/tokens and set HF_TOKEN=<token> (or run `huggingface-cli login`)"
        )
    if "trust_remote_code" in text or "custom code" in text:
        return ModelLoadError(
            f"{model_id} runs its own Python code from the model repository: review it, then set "
            "model.trust_remote_code: true (or WAKERU_MODEL__TRUST_REMOTE_CODE=true)"
        )
    if "RevisionNotFoundError" in names:
        return ModelLoadError(f"{model_id} has no revision named as in model.revision; check the branch, tag or commit")
    if (
        "RepositoryNotFoundError" in names
        or "is not a valid model identifier" in text
        or "not a local folder and is not a valid model" in text
    ):
        return ModelLoadError(
            f"{model_id} is neither a local directory nor a model on the Hugging Face hub; check model.id "
            "(private repositories also need HF_TOKEN)"
        )
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text:
        return ModelLoadError(
            f"out of memory while loading {model_id}: choose a smaller model, model.dtype bfloat16, or free the GPU"
        )
    if (
        "LocalEntryNotFoundError" in names
        or "offline" in text
        or "couldn't connect" in text
        or "connection" in text
        or "cannot find the requested files" in text
    ):
        return ModelLoadError(
            f"{model_id} is not in the local Hugging Face cache and the hub cannot be reached: run once with network "
            "access (HF_HUB_OFFLINE unset) to download it, or set model.id to a local directory"
        )
    if "does not appear to have a file named" in text or "no file named" in text or "doesn't have a file" in text:
        return ModelLoadError(f"{model_id} is missing files ({_first_line(exc)}); re-download it or check model.id")
    if "does not recognize this architecture" in text or "unrecognized" in text or "model_type" in text:
        return ModelLoadError(
            f"{model_id} has an architecture this transformers {transformers.__version__} does not know: "
            "upgrade transformers or choose a CLIP/SigLIP/SigLIP 2 checkpoint"
        )
    return ModelLoadError(f"cannot load {model_id}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def model_source(model_id: str) -> str:
    """What to hand to from_pretrained: a checked, expanded directory, or the hub id as is."""
    if not looks_local(model_id):
        return model_id
    path = Path(model_id).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model directory {model_id} does not exist; check model.id")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{model_id} is not a model directory (no config.json); point model.id at a save_pretrained folder"
        )
    return str(path)


def unwrap_features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4.x and a ModelOutput in 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find the embedding in a {type(output).__name__}")
