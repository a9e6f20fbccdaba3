"""Build local checkpoints with random weights, for tests and benchmarks without the hub.

Each family gets the real transformers classes (CLIPModel, SiglipModel, Siglip2Model,
MetaClip2Model) built from a config, a tokenizer trained here with sentencepiece or
tokenizers, and the image processor the real checkpoints ship, all written with save_pretrained so
they load back through the normal loading path. Japanese Stable CLIP is gated remote
code; its stand-in is a small remote-code model (auto_map) that records the exact
inputs the adapter sends.

    python -m model_worker make-checkpoint --family siglip --preset base /tmp/siglip-base
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypedDict

FAMILIES = ("siglip", "siglip2", "clip", "metaclip2", "japanese-stable-clip")

# Tower sizes. "base" is ViT-B/16 at 224 with a 12-layer text tower: the benchmark size.
PRESETS = {
    "tiny": dict(
        hidden=32,
        layers=2,
        heads=2,
        mlp=64,
        image=32,
        patch=8,
        proj=32,
        vocab=1000,
        text_hidden=32,
        text_layers=2,
        text_heads=2,
        text_mlp=64,
    ),
    "small": dict(
        hidden=256,
        layers=4,
        heads=4,
        mlp=1024,
        image=224,
        patch=16,
        proj=256,
        vocab=8000,
        text_hidden=256,
        text_layers=4,
        text_heads=4,
        text_mlp=1024,
    ),
    "base": dict(
        hidden=768,
        layers=12,
        heads=12,
        mlp=3072,
        image=224,
        patch=16,
        proj=768,
        vocab=32000,
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        text_mlp=3072,
    ),
    # ViT-L/16 at 256 px, both towers (as google/siglip-large-patch16-256): the GPU benchmark's size
    "large": dict(
        hidden=1024,
        layers=24,
        heads=16,
        mlp=4096,
        image=256,
        patch=16,
        proj=1024,
        vocab=32000,
        text_hidden=1024,
        text_layers=24,
        text_heads=16,
        text_mlp=4096,
    ),
}

_JA_WORDS = [
    "犬",
    "猫",
    "鳥",
    "魚",
    "馬",
    "牛",
    "羊",
    "うさぎ",
    "熊",
    "象",
    "キリン",
    "ライオン",
    "虎",
    "猿",
    "パンダ",
    "狐",
    "狼",
    "亀",
    "蛇",
    "人",
    "食べ物",
    "飲み物",
    "花",
    "車",
    "乗り物",
    "建物",
    "風景",
    "空",
    "海",
    "山",
    "街並み",
    "室内",
    "料理",
    "動物",
    "植物",
    "文字",
    "ラーメン",
    "寿司",
    "カレーライス",
    "天ぷら",
    "ケーキ",
    "パン",
    "ピザ",
    "コーヒー",
    "お茶",
    "ビール",
    "果物",
    "自転車",
    "バイク",
    "バス",
    "電車",
    "新幹線",
    "飛行機",
    "船",
    "ロケット",
    "川",
    "森",
    "夜景",
    "夕焼け",
    "雪景色",
    "桜",
    "紅葉",
    "神社",
    "寺",
    "城",
    "公園",
    "宇宙飛行士",
    "カップ",
    "オートバイ",
    "赤い",
    "青い",
    "緑の",
    "黄色い",
    "白い",
    "黒い",
    "丸",
    "四角",
    "三角",
    "星",
    "円",
    "正方形",
    "三角形",
]
_TEMPLATES = (
    "{}の写真",
    "{}の画像",
    "{}が写っている写真",
    "{}のイラスト",
    "a photo of a {}.",
    "this is a photo of {}.",
)
_EN_WORDS = [
    "dog",
    "cat",
    "bird",
    "fish",
    "horse",
    "car",
    "bus",
    "train",
    "plane",
    "ship",
    "rocket",
    "coffee",
    "cup",
    "astronaut",
    "motorcycle",
    "red",
    "blue",
    "green",
]


def corpus() -> list[str]:
    """Training text for the local tokenizers: every word under every template."""
    lines = [t.replace("{}", w) for w in _JA_WORDS + _EN_WORDS for t in _TEMPLATES]
    lines += [" ".join(_JA_WORDS[i : i + 6]) for i in range(0, len(_JA_WORDS), 3)]
    return lines * 3


class _Pieces(TypedDict):
    """The special tokens' pieces, as sentencepiece's trainer options name them."""

    unk_piece: str
    bos_piece: str
    eos_piece: str
    pad_piece: str


def _train_sentencepiece(
    path: Path, vocab_size: int, *, unk: int, bos: int, eos: int, pad: int, pieces: _Pieces
) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
        unk_id=unk,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        num_threads=1,
        **pieces,
    )
    path.write_bytes(buf.getvalue())
    return path


def _sentencepiece_tokenizer(
    out: Path,
    tokenizer_class: str,
    filename: str,
    ids: dict[str, int],
    pieces: _Pieces,
    extra: dict | None = None,
):
    """Train a sentencepiece model, load it as `tokenizer_class`, save it into `out`."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _train_sentencepiece(Path(tmp) / filename, 1000, **ids, pieces=pieces)
        names = {
            "unk": pieces["unk_piece"],
            "bos": pieces["bos_piece"],
            "eos": pieces["eos_piece"],
            "pad": pieces["pad_piece"],
        }
        config = {"tokenizer_class": tokenizer_class, **{f"{k}_token": v for k, v in names.items()}, **(extra or {})}
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
        tok = AutoTokenizer.from_pretrained(tmp)
    tok.save_pretrained(out)
    return tok


def gemma_tokenizer(out: Path):
    # Gemma ids as in the SigLIP 2 checkpoints: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
    return _sentencepiece_tokenizer(
        out,
        "GemmaTokenizer",
        "tokenizer.model",
        dict(pad=0, eos=1, bos=2, unk=3),
        dict(pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>"),
    )


def t5_tokenizer(out: Path):
    # As Japanese Stable CLIP's: <unk>=0, <s>=1, </s>=2, [PAD]=3.
    return _sentencepiece_tokenizer(
        out,
        "T5Tokenizer",
        "spiece.model",
        dict(unk=0, bos=1, eos=2, pad=3),
        dict(unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="[PAD]"),
        extra={"extra_ids": 0, "model_max_length": 77},
    )


def xlmv_tokenizer(out: Path):
    # As MetaCLIP 2's XLM-V tokenizer (XLMRobertaTokenizer): the sentencepiece model holds <unk>=0,
    # <s>=1, </s>=2 and no pad; the fairseq mapping gives <s>=0, <pad>=1, </s>=2, <unk>=3.
    return _sentencepiece_tokenizer(
        out,
        "XLMRobertaTokenizer",
        "sentencepiece.bpe.model",
        dict(unk=0, bos=1, eos=2, pad=-1),
        dict(unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>"),
        extra={"model_max_length": 77},
    )


def clip_tokenizer(out: Path):
    """A byte-level BPE with CLIP's normaliser, split rule and </w> suffix, trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    special = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(unk_token=special[1], end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=special,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text())
        # every byte, alone and word-final, so nothing maps to <unk>
        for ch in sorted(alphabet):
            for piece in (ch, ch + "</w>"):
                vocab.setdefault(piece, len(vocab))
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (Path(tmp) / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "CLIPTokenizer",
                    "bos_token": special[0],
                    "eos_token": special[1],
                    "pad_token": special[1],
                    "unk_token": special[1],
                    "model_max_length": 77,
                }
            )
        )
        clip = AutoTokenizer.from_pretrained(tmp)
    clip.save_pretrained(out)
    return clip


def _vision_kwargs(p: dict) -> dict:
    return dict(
        hidden_size=p["hidden"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        intermediate_size=p["mlp"],
        image_size=p["image"],
        patch_size=p["patch"],
    )


def _text_kwargs(p: dict, vocab: int, max_pos: int) -> dict:
    return dict(
        hidden_size=p["text_hidden"],
        num_hidden_layers=p["text_layers"],
        num_attention_heads=p["text_heads"],
        intermediate_size=p["text_mlp"],
        vocab_size=vocab,
        max_position_embeddings=max_pos,
    )


def _save(model, out: Path) -> None:
    model.eval()
    model.save_pretrained(out, safe_serialization=True)


def _siglip_text(out: Path, preset: str) -> dict:
    """Gemma tokenizer into `out`, and the SigLIP text-tower config for it (64 positions, 16 when tiny)."""
    p = PRESETS[preset]
    if p["text_hidden"] != p["hidden"]:
        raise ValueError("SigLIP needs equal tower widths")
    out.mkdir(parents=True, exist_ok=True)
    tok = gemma_tokenizer(out)
    text = _text_kwargs(p, max(p["vocab"], len(tok)), 16 if preset == "tiny" else 64)
    text.update(pad_token_id=0, eos_token_id=1, bos_token_id=2, projection_size=p["text_hidden"])
    return text


def build_siglip(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """SiglipModel (as the fixed-resolution SigLIP / SigLIP 2 checkpoints) + Gemma tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    p = PRESETS[preset]
    text = _siglip_text(out, preset)
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=_vision_kwargs(p)))
    _save(model, out)
    SiglipImageProcessor(
        size={"height": p["image"], "width": p["image"]}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)
    return out


def build_siglip2(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Siglip2Model (NaFlex: variable aspect ratio, patch mask) + Gemma tokenizer."""
    import torch
    from transformers import Siglip2Config, Siglip2Model
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    p = PRESETS[preset]
    text = _siglip_text(out, preset)
    max_patches = (p["image"] // p["patch"]) ** 2
    vision = {**_vision_kwargs(p), "num_patches": max_patches}
    vision.pop("image_size")
    torch.manual_seed(seed)
    model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    _save(model, out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Siglip2ImageProcessor",
                "do_resize": True,
                "resample": 2,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "patch_size": p["patch"],
                "max_num_patches": max_patches,
            }
        )
    )
    AutoImageProcessor.from_pretrained(out)  # fail here, not in a test, if the layout is wrong
    return out


def _clip_like(out: Path, preset: str, seed: int, tok: Any, config_cls: Any, model_cls: Any, vocab: int) -> Path:
    """A CLIP-architecture model (the text tower pools at the tokenizer's </s>, so its ids go in the config, as in
    the real configs) + the tokenizer already saved in `out` + CLIP's image processor (shortest edge, centre crop)."""
    import torch
    from transformers import CLIPImageProcessor

    p = PRESETS[preset]
    text = _text_kwargs(p, vocab, 77)
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = model_cls(config_cls(text_config=text, vision_config=_vision_kwargs(p), projection_dim=p["proj"]))
    _save(model, out)
    CLIPImageProcessor(
        size={"shortest_edge": p["image"]}, crop_size={"height": p["image"], "width": p["image"]}, resample=3
    ).save_pretrained(out)
    return out


def build_clip(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """CLIPModel + CLIP byte-level BPE tokenizer + CLIP image processor."""
    from transformers import CLIPConfig, CLIPModel

    out.mkdir(parents=True, exist_ok=True)
    tok = clip_tokenizer(out)
    return _clip_like(out, preset, seed, tok, CLIPConfig, CLIPModel, len(tok))


def build_metaclip2(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """MetaClip2Model (MetaCLIP 2 worldwide) + XLM-V style tokenizer + CLIP image processor."""
    from transformers import MetaClip2Config, MetaClip2Model

    out.mkdir(parents=True, exist_ok=True)
    tok = xlmv_tokenizer(out)
    return _clip_like(out, preset, seed, tok, MetaClip2Config, MetaClip2Model, max(PRESETS[preset]["vocab"], len(tok)))


# A remote-code stand-in for Japanese Stable CLIP: same model_type and call signatures,
# tiny towers, and a record of every text batch it receives so tests can check the
# exact ids, attention mask and position_ids.
_JSC_CONFIG = """
from transformers import PretrainedConfig


class JapaneseStableCLIPConfig(PretrainedConfig):
    model_type = "japanese_stable_clip"

    def __init__(self, vocab_size=1000, hidden_size=32, projection_dim=32, image_size=32, patch_size=8,
                 max_position_embeddings=77, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.projection_dim = projection_dim
        self.image_size = image_size
        self.patch_size = patch_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)
"""

_JSC_MODEL = """
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_japanese_stable_clip import JapaneseStableCLIPConfig


class JapaneseStableCLIPModel(PreTrainedModel):
    config_class = JapaneseStableCLIPConfig
    base_model_prefix = "jsc"
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.patch = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.text_calls = []
        self.image_calls = []
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)

    def get_text_features(self, input_ids=None, attention_mask=None, position_ids=None):
        self.text_calls.append({"input_ids": input_ids.detach().cpu().clone(),
                                "attention_mask": attention_mask.detach().cpu().clone(),
                                "position_ids": position_ids.detach().cpu().clone()})
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.text_projection(pooled)

    def get_image_features(self, pixel_values=None):
        self.image_calls.append(tuple(pixel_values.shape))
        pooled = self.patch(pixel_values).flatten(2).mean(-1)
        return self.visual_projection(pooled)
"""


def build_japanese_stable_clip_standin(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    import importlib.util
    import sys

    import torch
    from transformers import CLIPImageProcessor

    p = PRESETS[preset]
    out.mkdir(parents=True, exist_ok=True)
    tok = t5_tokenizer(out)
    (out / "configuration_japanese_stable_clip.py").write_text(_JSC_CONFIG)
    (out / "modeling_japanese_stable_clip.py").write_text(_JSC_MODEL)
    # Import the files as a throwaway package to instantiate and save the weights.
    pkg = f"_wakeru_jsc_{os.getpid()}_{abs(hash(str(out)))}"
    spec = importlib.util.spec_from_file_location(pkg, out / "__init__.py", submodule_search_locations=[str(out)])
    assert spec is not None  # a .py file always has a loader
    (out / "__init__.py").write_text("")
    module = importlib.util.module_from_spec(spec)
    sys.modules[pkg] = module
    try:
        conf_mod = importlib.import_module(f"{pkg}.configuration_japanese_stable_clip")
        model_mod = importlib.import_module(f"{pkg}.modeling_japanese_stable_clip")
        config = conf_mod.JapaneseStableCLIPConfig(
            vocab_size=max(p["vocab"], len(tok)),
            hidden_size=p["hidden"],
            projection_dim=p["proj"],
            image_size=p["image"],
            patch_size=p["patch"],
            architectures=["JapaneseStableCLIPModel"],
            auto_map={
                "AutoConfig": "configuration_japanese_stable_clip.JapaneseStableCLIPConfig",
                "AutoModel": "modeling_japanese_stable_clip.JapaneseStableCLIPModel",
            },
        )
        torch.manual_seed(seed)
        model = model_mod.JapaneseStableCLIPModel(config)
        model.save_pretrained(out, safe_serialization=True)
    finally:
        for name in [n for n in sys.modules if n == pkg or n.startswith(pkg + ".")]:
            del sys.modules[name]
        (out / "__init__.py").unlink(missing_ok=True)
    # config.json must name the auto classes relative to the repo, as on the hub
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_japanese_stable_clip.JapaneseStableCLIPConfig",
        "AutoModel": "modeling_japanese_stable_clip.JapaneseStableCLIPModel",
    }
    cfg["model_type"] = "japanese_stable_clip"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    CLIPImageProcessor(
        size={"shortest_edge": p["image"]},
        crop_size={"height": p["image"], "width": p["image"]},
        resample=3,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    ).save_pretrained(out)
    return out


def _build_onnx_clip(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    from model_worker.devtools.onnx_export import build_onnx_clip  # needs the onnx package: only when asked

    return build_onnx_clip(out, preset, seed)


BUILDERS = {
    "siglip": build_siglip,
    "siglip2": build_siglip2,
    "clip": build_clip,
    "metaclip2": build_metaclip2,
    "japanese-stable-clip": build_japanese_stable_clip_standin,
    "onnx-clip": _build_onnx_clip,  # not in FAMILIES: an export of metaclip2, not a transformers checkpoint
}


def build(family: str, out: str | os.PathLike[str], preset: str = "tiny", seed: int = 0) -> Path:
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(BUILDERS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return BUILDERS[family](Path(out), preset, seed)
