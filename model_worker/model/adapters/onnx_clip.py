"""open_clip models exported to ONNX as two graphs, in the layout Immich publishes them (its XLM-R and NLLB
CLIPs have the best Japanese retrieval figures, and are not transformers classes):

    config.json                  open_clip's model config: embed_dim, vision_cfg, text_cfg (context_length,
                                 tokenizer_kwargs)
    visual/model.onnx            input "image" (N×3×S×S float, normalised) → the L2-normalised embedding
    visual/preprocess_cfg.json   size, mean, std, interpolation, resize_mode
    textual/model.onnx           input "text" (N×context_length token ids; or "input_ids" + "attention_mask" for
                                 Multilingual-CLIP) → the L2-normalised embedding
    textual/tokenizer.json       the fast tokenizer, with tokenizer_config.json naming the pad token

Text is cleaned as open_clip does (whitespace collapsed; "canonicalize" also lower-cases and drops punctuation),
padded with the pad token to context_length (on the side tokenizer_config.json names, right by default) and
truncated there. NLLB tokenizers know FLORES-200 language codes:
each text is prefixed with its language's code (jpn_Jpan for text with Japanese script, eng_Latn otherwise), as
NLLB-CLIP was trained. Graphs exported with a fixed batch of 1 (Immich's) run one input at a time.

The exports carry no logit scale: shares are softmax(100 × cosine), 100 being the ceiling CLIP training clamps
the scale at (and where trained CLIPs end up); "does this label fit" compares each label with the neutral
reference description, as for the other CLIP-family models.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model_worker.image.preprocess import FixedResolution, UnsupportedProcessor, from_preprocess_cfg
from model_worker.model.adapters.base import Adapter
from model_worker.model.loading import ModelLoadError

LOGIT_SCALE = 100.0
VISUAL, TEXTUAL = "visual/model.onnx", "textual/model.onnx"
# What a hub download of an export fetches: its config and the two folders (graphs, any external weights file next
# to them, tokenizer and preprocessing configs), without the other runtimes' files Immich's repositories also hold.
HUB_FILES = ["config.json", "visual/*", "textual/*"]
HUB_SKIPPED = ["*.armnn", "*.rknn", "*/rknpu/*", "*/armnn/*"]
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
_JAPANESE = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


def is_onnx_export(root: Path) -> bool:
    """Whether a folder holds an open_clip ONNX export: its config.json is open_clip's (vision_cfg and text_cfg,
    which transformers configs never have). Missing graphs are then the adapter's to explain."""
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_cfg" in config and "text_cfg" in config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"the ONNX export has no {path.parent.name}/{path.name}; re-download it") from None
    except ValueError as e:
        raise ModelLoadError(f"{path.parent.name}/{path.name} of the ONNX export is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path.parent.name}/{path.name} of the ONNX export is not a JSON object")
    return value


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": …}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        raise ModelLoadError(
            "model.device is 'cuda' but this onnxruntime has no CUDA provider: install onnxruntime-gpu "
            "(instead of onnxruntime), or use model.device auto or cpu"
        )
    return ["CPUExecutionProvider"]


class _Graph:
    """One ONNX Runtime session with its inputs' names, numpy types and fixed batch size (None: any)."""

    def __init__(self, root: Path, name: str, device: str, threads: int):
        import onnxruntime as ort

        if not (root / name).is_file():
            raise ModelLoadError(f"the ONNX export has no {name}; re-download it (or export it again)")
        providers = _providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.log_severity_level = 3  # errors only: the exports' unused-initialiser warnings are noise
        # ONNX Runtime's threads spin between runs by default, burning the cores the worker's decode threads (and
        # the bot, on a shared machine) need between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(root / name), options, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"cannot load {name} of the ONNX export: {str(e).splitlines()[0][:200]}") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.types = {n: _NUMPY_TYPES.get(i.type) for n, i in self.inputs.items()}
        first = next(iter(self.inputs.values())).shape
        self.batch = first[0] if first and isinstance(first[0], int) else None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: value.astype(self.types[name] or value.dtype, copy=False) for name, value in feeds.items()}
        count = len(next(iter(feeds.values())))
        if self.batch is None or self.batch == count:
            return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
        rows = [self.session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0] for i in range(count)]
        return np.concatenate(rows).astype(np.float32, copy=False)


class OnnxClipAdapter(Adapter):
    family = "onnx-clip"
    score_meaning = "share among the given labels: softmax of 100 × cosine (ONNX exports carry no logit scale)"

    def __init__(self, root: Path, *, model_id: str, revision: str | None, device: str, threads: int):
        from tokenizers import Tokenizer

        self.root, self.model_id, self.revision = root, model_id, revision
        # Preprocessing and scoring stay on the CPU in torch; ONNX Runtime places the graphs (CUDA when it can).
        self.device, self.dtype = torch.device("cpu"), torch.float32
        config = _read_json(root / "config.json")
        text_cfg = config.get("text_cfg") or {}
        self.context_length = int(text_cfg.get("context_length", 77))
        clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
        self.canonicalize = clean == "canonicalize"
        self.preprocess_cfg = _read_json(root / "visual" / "preprocess_cfg.json")
        try:
            self.preprocessor = from_preprocess_cfg(self.preprocess_cfg)
        except UnsupportedProcessor as e:
            raise ModelLoadError(f"visual/preprocess_cfg.json of the ONNX export: {e}") from None
        self.visual = _Graph(root, VISUAL, device, threads)
        self.textual = _Graph(root, TEXTUAL, device, threads)
        self._check_graphs()
        tokenizer_cfg = _read_json(root / "textual" / "tokenizer_config.json")
        try:
            self.tokenizer = Tokenizer.from_file(str(root / "textual" / "tokenizer.json"))
        except Exception as e:
            raise ModelLoadError(f"cannot read textual/tokenizer.json of the ONNX export: {e}") from None
        pad = _token(tokenizer_cfg.get("pad_token"))
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if pad is None or pad_id is None:
            raise ModelLoadError(
                "textual/tokenizer_config.json of the ONNX export names no pad token the tokenizer knows"
            )
        side = "left" if tokenizer_cfg.get("padding_side") == "left" else "right"  # open_clip's are right-padded
        self.tokenizer.enable_padding(length=self.context_length, pad_id=pad_id, pad_token=pad, direction=side)
        self.tokenizer.enable_truncation(max_length=self.context_length)
        # NLLB: FLORES-200 codes are tokens of its vocabulary
        self.flores = {code: code for code in ("jpn_Jpan", "eng_Latn") if self.tokenizer.token_to_id(code) is not None}

    def _check_graphs(self) -> None:
        image = self.visual.inputs.get("image")
        if image is None or len(self.visual.inputs) != 1:
            raise ModelLoadError(f"visual/model.onnx takes {sorted(self.visual.inputs)}; an export takes one 'image'")
        side = image.shape[-1] if image.shape else None
        wanted = self.preprocessor.draft_size[0] if isinstance(self.preprocessor, FixedResolution) else None
        if isinstance(side, int) and side != wanted:
            raise ModelLoadError(
                f"visual/model.onnx takes {side}×{side} pictures but preprocess_cfg.json makes {wanted}×{wanted}"
            )
        names = set(self.textual.inputs)
        if names not in ({"text"}, {"input_ids", "attention_mask"}):
            raise ModelLoadError(
                f"textual/model.onnx takes {sorted(names)}; an export takes 'text' (or 'input_ids' and "
                "'attention_mask')"
            )
        length = next(iter(self.textual.inputs.values())).shape[-1]
        if isinstance(length, int) and length != self.context_length:
            raise ModelLoadError(
                f"textual/model.onnx takes {length} tokens but config.json's text_cfg.context_length is "
                f"{self.context_length}"
            )
        for name, graph in (("visual", self.visual), ("textual", self.textual)):
            if graph.batch not in (None, 1):
                raise ModelLoadError(f"{name}/model.onnx takes batches of exactly {graph.batch}; 1 or any is needed")

    def _clean(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        if self.canonicalize:
            text = text.translate(str.maketrans("", "", string.punctuation)).lower()
        text = " ".join(text.split())
        if self.flores:
            code = "jpn_Jpan" if _JAPANESE.search(text) else "eng_Latn"
            text = f"{self.flores.get(code, '')}{text}"
        return text

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch([self._clean(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        if "text" in self.textual.inputs:
            feeds = {"text": ids}
        else:
            feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
        return torch.from_numpy(self.textual.run(feeds))

    def _image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"].detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.visual.run({"image": pixels}))

    def _logits(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine * LOGIT_SCALE

    @torch.inference_mode()
    def reference_share(self, image: Image.Image, texts: list[str]) -> torch.Tensor:
        # The plain way, as an ONNX export's own reference code runs it: the whole picture resized, then cropped,
        # normalised in numpy, batch 1 through each graph.
        cfg = self.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], list) else cfg["size"]
        resample = Image.Resampling[str(cfg.get("interpolation", "bicubic")).upper()]
        image = image.convert("RGB")
        if cfg.get("resize_mode", "shortest") == "squash":
            image = image.resize((size, size), resample)
        else:
            short, long = sorted(image.size)
            w, h = (size, int(size * long / short)) if image.width <= image.height else (int(size * long / short), size)
            image = image.resize((w, h), resample)
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        pixels = (np.asarray(image, np.float32) / 255 - np.array(cfg["mean"], np.float32)) / np.array(
            cfg["std"], np.float32
        )
        image_emb = self.visual.run({"image": pixels.transpose(2, 0, 1)[None]})
        text_emb = np.concatenate([self._text_features([t]).numpy() for t in texts])
        image_emb /= np.linalg.norm(image_emb, axis=-1, keepdims=True)
        text_emb /= np.linalg.norm(text_emb, axis=-1, keepdims=True)
        return torch.from_numpy(image_emb @ text_emb.T * LOGIT_SCALE).softmax(dim=-1)[0]
