"""The loader nodes' face without ComfyUI: which files each lists, search aliases, tooltips, error type names."""
from __future__ import annotations

import os
import time

import pytest
from factories import write_llama_cpp_encoder_gguf
from zimage_factory import write_zimage_gguf

from comfyui_zimage_gguf import errors
from comfyui_zimage_gguf.errors import IncompatibleModelError, ModelDetectionError, ZImageGGUFError
from comfyui_zimage_gguf.nodes import loaders
from comfyui_zimage_gguf.model_families.text_encoders import detect_text_encoder
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf

SMALL_ENCODER = dict(arch="qwen3", n_layers=1, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=300)


@pytest.fixture
def model_folder(tmp_path):
    """A models folder as users have it: diffusion models, text encoders, junk, all mixed."""
    write_zimage_gguf(tmp_path / "z_image_turbo-Q8_0.gguf", n_layers=1, width=64, caption_width=32)
    (tmp_path / "sub").mkdir()
    write_zimage_gguf(tmp_path / "sub" / "z_sdcpp.gguf", n_layers=1, style="sdcpp", width=64, caption_width=32)
    write_llama_cpp_encoder_gguf(tmp_path / "Qwen3-4B-Q8_0.gguf", **SMALL_ENCODER)
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    (tmp_path / "notes.txt").write_text("not a model")
    return tmp_path


def test_each_loader_lists_its_own_files_and_the_unclassifiable(model_folder):
    assert loaders.list_gguf_files([str(model_folder)], loaders.DIFFUSION) == [
        "broken.gguf", "sub/z_sdcpp.gguf", "z_image_turbo-Q8_0.gguf"]
    assert loaders.list_gguf_files([str(model_folder)], loaders.TEXT_ENCODER) == ["Qwen3-4B-Q8_0.gguf", "broken.gguf"]
    assert len(loaders.list_gguf_files([str(model_folder)])) == 4  # no kind: every .gguf


def test_classification_is_cached_by_size_and_mtime(model_folder):
    path = str(model_folder / "Qwen3-4B-Q8_0.gguf")
    assert loaders.gguf_kind(path) == loaders.TEXT_ENCODER
    stat = os.stat(path)
    # Same size and mtime, other content: the cached answer stands (the header was not read again) ...
    data = bytearray(open(path, "rb").read())
    data[0:4] = b"XXXX"
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert loaders.gguf_kind(path) == loaders.TEXT_ENCODER
    # ... a new mtime makes it read the header again, which is now unreadable: unknown, still listed.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert loaders.gguf_kind(path) is None


def test_listing_fifty_files_twice_measures_the_cache(tmp_path, capsys):
    """Prints the time to list 50 GGUFs (25 diffusion, 25 encoders) cold and cached: a figure, not a limit."""
    write_zimage_gguf(tmp_path / "z.gguf", n_layers=1, width=64, caption_width=32)
    write_llama_cpp_encoder_gguf(tmp_path / "q.gguf", **SMALL_ENCODER)
    folder = tmp_path / "models"
    folder.mkdir()
    for i in range(25):
        (folder / f"z{i:02}.gguf").write_bytes((tmp_path / "z.gguf").read_bytes())
        (folder / f"q{i:02}.gguf").write_bytes((tmp_path / "q.gguf").read_bytes())
    start = time.perf_counter()
    cold = loaders.list_gguf_files([str(folder)], loaders.DIFFUSION)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = loaders.list_gguf_files([str(folder)], loaders.DIFFUSION)
    warm_s = time.perf_counter() - start
    assert cold == warm == [f"z{i:02}.gguf" for i in range(25)]
    with capsys.disabled():
        print(f"\n[listing 50 GGUFs] first {cold_s * 1000:.1f} ms, cached {warm_s * 1000:.1f} ms")


def test_search_aliases_cover_the_words_users_type():
    diffusion = loaders.ZImageGGUFDiffusionModelLoader.SEARCH_ALIASES
    encoder = loaders.ZImageGGUFTextEncoderLoader.SEARCH_ALIASES
    for phrase in ("unet gguf", "gguf loader", "diffusion model gguf", "z-image"):
        assert phrase in diffusion
    for phrase in ("clip gguf", "text encoder gguf", "qwen gguf", "gguf loader", "z-image"):
        assert phrase in encoder


@pytest.mark.parametrize("tooltips", [loaders.DIFFUSION_TOOLTIPS, loaders.TEXT_ENCODER_TOOLTIPS])
def test_every_option_tooltip_says_when_to_change_it(tooltips):
    for name, tooltip in tooltips.items():
        if name in ("unet_name", "clip_name"):
            assert "models/" in tooltip and "not listed here" in tooltip, tooltip
        else:
            assert any(word in tooltip for word in ("leave", "change it only", "Pick", "pick")), (name, tooltip)
    assert all("before LoRA patches apply" not in tooltip for tooltip in tooltips.values())


def test_errors_report_a_short_stable_type_name():
    # ComfyUI shows f"{type(e).__module__}.{type(e).__qualname__}" (execution.full_type_name)
    for cls in (ZImageGGUFError, errors.GGUFFormatError, errors.UnsupportedQuantTypeError, ModelDetectionError,
                IncompatibleModelError):
        assert f"{cls.__module__}.{cls.__qualname__}" == f"ZImageGGUF.{cls.__name__}"

    class Later(ZImageGGUFError):  # subclasses elsewhere in the pack get the same module
        pass

    assert Later.__module__ == "ZImageGGUF"


def test_diffusion_model_in_the_text_encoder_loader_names_the_node_and_folder(tmp_path):
    path = tmp_path / "z.gguf"
    write_zimage_gguf(path, n_layers=1, width=64, caption_width=32)
    with load_gguf(path) as gguf_file, pytest.raises(ModelDetectionError) as err:
        detect_text_encoder(gguf_file.metadata, gguf_file.shapes, str(path))
    first, *details = str(err.value).splitlines()
    assert first == ("z.gguf is a diffusion model: load it with "
                     "'Load Diffusion Model (GGUF, Z-Image pack)' from models/diffusion_models.")
    assert len(first) <= 120
    assert details[0].startswith("It is not a text encoder. Move the file into ComfyUI/models/diffusion_models")
    assert str(path) in details[1]


def test_prompt_encoding_reports_one_progress_step_per_layer():
    import types

    import torch
    import torch.nn as nn

    from comfyui_zimage_gguf.nodes.loaders import show_encode_progress

    class TextModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.heads = nn.ModuleList([nn.Linear(4, 4)])  # a shorter list: not the layers

        def encode_token_weights(self, token_weight_pairs):
            x = self.embed(torch.tensor(token_weight_pairs))
            for layer in self.layers:
                x = layer(x)
            return x, None

    class Bar:
        def __init__(self, total):
            self.total, self.steps = total, []
            bars.append(self)

        def update_absolute(self, value, total):
            self.steps.append((value, total))

    bars = []
    clip = types.SimpleNamespace(cond_stage_model=TextModel())
    assert show_encode_progress(clip, progress_bar=Bar) == 3
    with torch.inference_mode():
        clip.cond_stage_model.encode_token_weights([1, 2])
    assert [(bar.total, bar.steps) for bar in bars] == [(3, [(1, 3), (2, 3), (3, 3)])]
    clip.cond_stage_model.layers[0](torch.zeros(4))  # outside an encode: no bar is touched
    assert len(bars) == 1 and len(bars[0].steps) == 3
