import pytest
import torch

from model_worker.model.loading import (
    ModelLoadError,
    explain,
    resolve_device,
    resolve_dtype,
    unwrap_features,
)


def test_gated_model_says_how_to_get_access():
    from types import SimpleNamespace

    from huggingface_hub.errors import GatedRepoError

    response = SimpleNamespace(status_code=403, headers={}, request=None)  # what a refused download carries
    cause = GatedRepoError(
        "Access to model stabilityai/japanese-stable-clip-vit-l-16 is restricted.", response=response
    )
    wrapped = OSError("You are trying to access a gated repo. Make sure to have access to it.")
    wrapped.__cause__ = cause
    message = str(explain("stabilityai/japanese-stable-clip-vit-l-16", wrapped))
    assert "gated" in message
    assert "https://huggingface.co/stabilityai/japanese-stable-clip-vit-l-16" in message
    assert "HF_TOKEN" in message and "huggingface.co/settings/tokens" in message


@pytest.mark.parametrize(
    "exc, expected",
    [
        (
            OSError(
                "foo/bar is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'"
            ),
            "neither a local directory nor a model on the Hugging Face hub",
        ),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory"),
        (
            OSError(
                "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached files."
            ),
            "not in the local Hugging Face cache",
        ),
        (
            ValueError(
                "The checkpoint you are trying to load has model type `foo` but Transformers does not recognize this architecture."
            ),
            "architecture this transformers",
        ),
        (RuntimeError("something else entirely"), "cannot load foo/bar: RuntimeError: something else entirely"),
    ],
)
def test_load_errors_are_explained(exc, expected):
    assert expected in str(explain("foo/bar", exc))


def test_device_and_dtype_resolution(monkeypatch):
    import model_worker.model.loading as loading

    cpu = torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="float16 is not supported on CPU"):
        resolve_dtype("float16", cpu)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_unwrap_features_handles_both_transformers_generations():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.ones(2, 3)
    assert unwrap_features(t) is t  # transformers 4.x: a tensor
    assert unwrap_features(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 5, 3), pooler_output=t)) is t
    with pytest.raises(TypeError):
        unwrap_features(object())


def test_cpu_bf16_detection_reads_the_flags(monkeypatch, tmp_path):
    import builtins

    import model_worker.model.loading as loading

    real_open = builtins.open
    cpuinfo = tmp_path / "cpuinfo"

    def fake_open(path, *a, **k):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16\n")
    assert loading.cpu_has_fast_bf16() is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert loading.cpu_has_fast_bf16() is False
    cpuinfo.write_text("flags : avx512_bf16\n")
    assert loading.cpu_has_fast_bf16() is True
    cpuinfo.unlink()
    assert loading.cpu_has_fast_bf16() is False  # no /proc (macOS, Windows): float32
