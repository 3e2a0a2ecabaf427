"""GGUF files made by the real converters, read by the pack without ComfyUI.

llama.cpp's quantizer (llama-cpp-python) quantizes a small llama.cpp-style Qwen3 encoder to every
type it writes; stable-diffusion.cpp's converter (stable-diffusion-cpp-python) turns Z-Image
safetensors into GGUF in every type it writes. Every tensor of every file must dequantize to
exactly the float32 values ggml itself gives (and gguf-py, where it implements the type): real
blocks from the real quantizers, rather than random bytes. The files must also be recognised:
the encoders as llama.cpp Qwen3 models, the Z-Image files as Z-Image with ComfyUI's names and shapes.

Skipped unless $ZIMAGE_GGUF_TOOLS_PYTHON names a Python that imports the tools (see
tests/integration/tool_files.py); made files are cached in ~/.cache/comfyui_zimage_gguf/tool-made/.
Run: ZIMAGE_GGUF_TOOLS_PYTHON=/path/to/tools-venv/bin/python python -m pytest tests/test_tool_made_kernels.py
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q, GGUFReader, quants

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.errors import GGUFFormatError
from comfyui_zimage_gguf.model_families.diffusion import (
    detect_diffusion_model, expected_shape_fixes, normalize_diffusion_keys)
from comfyui_zimage_gguf.ops.runtime.state_dict import SMALL_TENSOR_ELEMENTS, build_state_dict
from comfyui_zimage_gguf.model_families.text_encoders import detect_text_encoder, encoder_config, hf_names
from comfyui_zimage_gguf.ops import QUANT_TYPES, dequantize
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor


import tool_files  # noqa: E402  (tests/integration is on pytest's pythonpath)
LLAMA_SKIP = tool_files.skip_reason(tool_files.LLAMA_CPP)
SD_SKIP = tool_files.skip_reason(tool_files.SD_CPP)
needs_llama_cpp = pytest.mark.skipif(LLAMA_SKIP is not None, reason=LLAMA_SKIP or "")
# ggml's reference dequantizer comes from the libggml llama-cpp-python ships
needs_both_tools = pytest.mark.skipif(LLAMA_SKIP is not None or SD_SKIP is not None,
                                      reason=LLAMA_SKIP or SD_SKIP or "")

NARROW_ZIMAGE = dict(width=256, caption_width=256)  # every sd.cpp type, in seconds
ZIMAGE_WIDTH = 3840
FLUX_VAE_TENSORS = 244


def _gguf_py_values(tensor) -> torch.Tensor | None:
    """gguf-py's dequantization, flat; None for the types it does not implement."""
    try:
        values = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        return None
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(-1))


def _assert_every_tensor_dequantizes_like_ggml(path: Path) -> set[Q]:
    """Every tensor through the pack's dequantize (float32) equals ggml's to_float and, for the
    types gguf-py implements, gguf-py's dequantize; returns the types the file holds."""
    reference = tool_files.ggml_dequantized(path)
    stored = {t.name: t for t in GGUFReader(str(path)).tensors}
    gguf_file = load_gguf(path)
    assert set(gguf_file.tensors) == set(stored) == set(reference)
    for name, info in gguf_file.tensors.items():
        got = dequantize(gguf_file.raw_tensor(name), info.ggml_type, info.shape, torch.float32).reshape(-1)
        expected = torch.from_numpy(reference[name])
        assert torch.equal(got, expected), (
            f"{name} ({info.ggml_type.name}): {int((got != expected).sum())} of {got.numel()} values differ from ggml's")
        gguf_py = _gguf_py_values(stored[name])
        assert gguf_py is None or torch.equal(got, gguf_py), f"{name} ({info.ggml_type.name}) vs gguf-py"
    return {info.ggml_type for info in gguf_file.tensors.values()}


# --- llama.cpp's quantizer ------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("quant", list(tool_files.LLAMA_QUANTS))
def test_llama_cpp_quantized_encoder_dequantizes_exactly_like_ggml(quant):
    _, path = tool_files.llama_quantized_encoder(quant)
    types = _assert_every_tensor_dequantizes_like_ggml(path)
    assert Q[tool_files.LLAMA_QUANTS[quant].main_type] in types  # the quantizer made what was asked


def test_llama_cpp_cases_cover_every_type_the_pack_dequantizes():
    float_types = {Q.F32, Q.F16}  # the norms, and the unquantized source file
    made = {q.main_type for q in (*tool_files.LLAMA_QUANTS.values(), *tool_files.LLAMA_NEWER_QUANTS.values())}
    assert {t.name for t in QUANT_TYPES} <= made | {t.name for t in float_types}


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["F16", "Q4_K_M", "IQ2_XXS", "NVFP4"])
def test_llama_cpp_quantized_encoder_is_read_as_the_source_qwen3(quant):
    if quant == "F16":
        path = tool_files.llama_encoder_source(tool_files.SMALL_QWEN3)
    else:
        _, path = tool_files.llama_quantized_encoder(quant)
    expected = tool_files.SMALL_QWEN3
    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    arch = detect_text_encoder(gguf_file.metadata, shapes, path)
    config = encoder_config(arch, gguf_file.metadata, shapes, path)
    assert (arch.arch, config.n_layers, config.hidden_size, config.n_heads, config.n_kv_heads, config.head_dim,
            config.intermediate_size, config.vocab_size, config.has_lm_head) == (
        "qwen3", expected["n_layers"], expected["hidden"], expected["heads"], expected["kv_heads"],
        expected["head_dim"], expected["ffn"], expected["vocab"], False)

    names = hf_names(arch, shapes, path)
    assert set(names) == set(shapes)
    assert "model.embed_tokens.weight" in names.values() and "model.layers.1.mlp.down_proj.weight" in names.values()
    state_dict, stats = build_state_dict(gguf_file, torch.float32, names={hf: cpp for cpp, hf in names.items()})
    assert sum(stats.type_counts.values()) == len(shapes)
    for hf, cpp in ((hf, cpp) for cpp, hf in names.items()):
        info = gguf_file.tensors[cpp]
        value = state_dict[hf]
        assert value.shape == info.shape
        if math.prod(info.shape) >= SMALL_TENSOR_ELEMENTS:
            assert isinstance(value, QuantizedTensor) and value.ggml_type == info.ggml_type, hf


def _newer_type_file(name: str) -> Path:
    try:
        return tool_files.llama_quantized_encoder(name)[1]
    except tool_files.ToolFailed as error:
        if f"LLAMA_FTYPE_MOSTLY_{name}" in str(error):
            pytest.skip(f"this llama-cpp-python has no {name}")
        raise


@needs_llama_cpp
def test_llama_cpp_q1_0_dequantizes_exactly_like_ggml():
    # Q1_0 is newer than gguf-py 0.19's classes: ggml's own to_float is the reference here
    path = _newer_type_file("Q1_0")
    types = _assert_every_tensor_dequantizes_like_ggml(path)
    assert Q.Q1_0 in types


@needs_llama_cpp
def test_llama_cpp_q2_0_unknown_to_gguf_py_is_refused_at_open_naming_tensor_and_type():
    path = _newer_type_file("Q2_0")
    with pytest.raises(GGUFFormatError) as raised:
        load_gguf(path)
    message = str(raised.value)
    assert str(path) in message and "blk." in message and "type id 42" in message


# --- stable-diffusion.cpp's converter ---------------------------------------------------------------


@needs_both_tools
@pytest.mark.parametrize("sd_type", tool_files.SDCPP_TYPES)
def test_sdcpp_converted_zimage_dequantizes_exactly_like_ggml(sd_type):
    path = tool_files.sdcpp_zimage(sd_type, **NARROW_ZIMAGE)
    types = _assert_every_tensor_dequantizes_like_ggml(path)
    assert Q[sd_type.upper()] in types


# The layouts sd.cpp's convert writes for Z-Image: from a split diffusion-model file (ComfyUI's bare
# names, as `sd -M convert -m z_image.safetensors` does) and from a full checkpoint's
# `model.diffusion_model.*` names with a VAE passed along (`--vae`), which lands as first_stage_model.*.
SDCPP_LAYOUTS = {
    "bare": dict(prefixed=False, with_vae=False, style="bare", prefix="", other_tensors=0),
    "prefixed_with_vae": dict(prefixed=True, with_vae=True, style="sdcpp", prefix=tool_files.SDCPP_PREFIX,
                              other_tensors=FLUX_VAE_TENSORS),
}


@needs_both_tools
@pytest.mark.parametrize("layout", list(SDCPP_LAYOUTS))
def test_sdcpp_converted_zimage_is_detected_and_maps_to_comfy_names_and_shapes(layout):
    expected = SDCPP_LAYOUTS[layout]
    path = tool_files.sdcpp_zimage("q8_0", prefixed=expected["prefixed"], with_vae=expected["with_vae"])
    gguf_file = load_gguf(path)
    shapes = gguf_file.shapes
    # what the pack's sd.cpp handling assumes: no metadata, pad tokens 1-D, norms quantized
    assert "general.architecture" not in gguf_file.metadata
    assert shapes[expected["prefix"] + "x_pad_token"] == (ZIMAGE_WIDTH,)
    assert gguf_file.tensors[expected["prefix"] + "layers.0.attention_norm1.weight"].ggml_type == Q.Q8_0

    info = detect_diffusion_model(gguf_file.metadata, shapes, str(path))
    assert (info.family, info.style, info.prefix, info.width, info.caption_width, info.other_tensors) == (
        "zimage", expected["style"], expected["prefix"], ZIMAGE_WIDTH, 2560, expected["other_tensors"])

    names = normalize_diffusion_keys(shapes)
    fixes = expected_shape_fixes(info.family, {new: shapes[old] for new, old in names.items()})
    state_dict, _ = build_state_dict(gguf_file, torch.float32, names=names, shapes=fixes)
    factory = tool_files._factory_module("zimage_factory")
    declared = {spec.name: spec.shape for spec in factory.zimage_tensor_specs(1)}
    assert {name: tuple(value.shape) for name, value in state_dict.items()} == declared
    stored = {t.name: t for t in GGUFReader(str(path)).tensors}
    for pad in ("x_pad_token", "cap_pad_token"):
        expected_values = _gguf_py_values(stored[expected["prefix"] + pad]).reshape(1, ZIMAGE_WIDTH)
        assert torch.equal(state_dict[pad], expected_values)
