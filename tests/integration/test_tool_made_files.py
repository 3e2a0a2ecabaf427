"""Files made by the real converters, loaded by the pack's loaders inside a real ComfyUI (in this
process, on the CPU).

* a Qwen3-4B-wide, 3-layer text encoder written in F16 and quantized to Q4_K_M by llama.cpp's
  quantizer encodes like its F16 source;
* Z-Image (full width, one main layer) converted from the factory's float16 safetensors by
  stable-diffusion.cpp's convert loads as ComfyUI's Z-Image and samples like the safetensors file
  loaded natively: exactly for F16, closely for Q8_0 / Q4_K, and the checkpoint-style file (names
  under model.diffusion_model., a VAE in the same file) exactly like the split-file one.

Needs COMFYUI_PATH and $ZIMAGE_GGUF_TOOLS_PYTHON (see tool_files.py); made files are cached.
Run: COMFYUI_PATH=/tmp/ComfyUI ZIMAGE_GGUF_TOOLS_PYTHON=/tmp/tools-venv/bin/python \
     /tmp/comfy-venv/bin/python -m pytest tests/integration/test_tool_made_files.py
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q

from comfyui_zimage_gguf import load_gguf
from comfyui_zimage_gguf.ops.runtime.state_dict import SMALL_TENSOR_ELEMENTS
from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import gguf_type


import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
import tool_files  # noqa: E402
LLAMA_SKIP = tool_files.skip_reason(tool_files.LLAMA_CPP)
SD_SKIP = tool_files.skip_reason(tool_files.SD_CPP)
pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)
needs_llama_cpp = pytest.mark.skipif(LLAMA_SKIP is not None, reason=LLAMA_SKIP or "")
needs_sd_cpp = pytest.mark.skipif(SD_SKIP is not None, reason=SD_SKIP or "")

CPU = torch.device("cpu")
LATENT_SHAPE = (1, 16, 8, 8)
CAPTION = (1, 12, 2560)
WIDTH = 3840
PROMPT = "a photo of a cat sitting on a red chair"
# Q4_K_M (Q4_K matrices; Q6_K for token_embd and the last layer's attn_v / ffn_down) of
# N(0, 0.02) weights, through 3 layers to layer -2, against the F16 source: measured RMS error 25.6%
# of the F16 features' RMS, per-token cosine similarity 0.959 at worst (seed 0, the prompt below);
# llama.cpp's Q8_0 of the same file measured 2.3% and 0.9997. A wrong dequantization or name map
# gives unrelated features (cosine near 0).
Q4_K_M_VS_F16_RMS_TOLERANCE = 0.35
Q4_K_M_VS_F16_MIN_COSINE = 0.93
# One euler step on an 8x8 latent against the native float16 safetensors, as a share of the native
# output's largest value (seed 0). sd.cpp's Q8_0 also quantizes the norm weights and pad tokens:
# measured 0.61%. Q4_K (norms and pads too, where their rows fit 256): measured 7.9%.
Q8_0_VS_NATIVE_TOLERANCE = 0.02
Q4_K_VS_NATIVE_TOLERANCE = 0.15


def _relative_difference(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got - reference).abs().max() / reference.abs().max())


# --- llama.cpp's quantizer: a Qwen3-4B-wide encoder --------------------------------------------------


@pytest.fixture(scope="module")
def comfy():
    try:
        comfy = inprocess.import_comfy()
    except inprocess.ComfyUnavailable as error:
        pytest.skip(str(error))
    yield comfy
    comfy.model_management.unload_all_models()
    gc.collect()


def _encode(clip) -> torch.Tensor:
    return clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))[0][0]


def _dequantized_by_gguf_py(path: Path, hf_names) -> dict[str, torch.Tensor]:
    """{HF name: float32 weights} from gguf-py's reader, name map and dequantization (no pack code)."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, tool_files.FULL_QWEN3_4B["n_layers"])
    stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    state_dict = {}
    for hf in hf_names:
        tensor = stored[name_map.get_name(hf, try_suffixes=(".weight", ".bias"))]
        values = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        state_dict[hf] = torch.from_numpy(values.reshape([int(d) for d in reversed(tensor.shape)]))
    return state_dict


@pytest.fixture(scope="module")
def qwen3_4b_encodings(comfy) -> dict:
    """The prompt encoded by the llama.cpp Q4_K_M file and its F16 source through the pack, and by
    ComfyUI's own model given gguf-py's dequantization of the Q4_K_M file; with the stored types."""
    from comfyui_zimage_gguf.nodes import loaders

    source, quantized = tool_files.llama_quantized_encoder("Q4_K_M", tool_files.FULL_QWEN3_4B)
    clip = loaders.load_text_encoder(str(quantized), "lumina2", {}, CPU)
    model = clip.cond_stage_model.qwen3_4b.transformer.model
    weight_types = {name: gguf_type(module.weight)  # the pack's tensor or ComfyUI's, whichever path loaded it
                    for name, module in (("token_embd.weight", model.embed_tokens),
                                         ("blk.0.ffn_up.weight", model.layers[0].mlp.up_proj),
                                         ("blk.2.attn_v.weight", model.layers[2].self_attn.v_proj))}
    hf_names = [key.removeprefix("qwen3_4b.transformer.") for key in clip.cond_stage_model.state_dict()
                if key.startswith("qwen3_4b.transformer.")]
    encodings = {"q4_k_m": _encode(clip), "weight_types": weight_types,
                 "stored_types": {name: info.ggml_type for name, info in load_gguf(quantized).tensors.items()}}
    del clip, model
    encodings["f16"] = _encode(loaders.load_text_encoder(str(source), "lumina2", {}, CPU))
    native = comfy.sd.load_text_encoder_state_dicts(
        [_dequantized_by_gguf_py(quantized, hf_names)], clip_type=comfy.sd.CLIPType.LUMINA2,
        model_options={"qwen3_4b_model_config": {"num_hidden_layers": tool_files.FULL_QWEN3_4B["n_layers"]}})
    encodings["native_dequantized"] = _encode(native)
    del native
    comfy.model_management.unload_all_models()
    gc.collect()
    return encodings


@needs_llama_cpp
def test_llama_cpp_q4_k_m_qwen3_4b_loads_with_its_stored_types(qwen3_4b_encodings):
    stored = qwen3_4b_encodings["stored_types"]
    assert qwen3_4b_encodings["weight_types"] == {name: stored[name] for name in qwen3_4b_encodings["weight_types"]}
    assert {Q.Q4_K, Q.Q6_K} <= set(stored.values())


@needs_llama_cpp
def test_llama_cpp_q4_k_m_qwen3_4b_encodes_exactly_like_comfy_given_the_dequantized_weights(qwen3_4b_encodings):
    # fp32 compute on the CPU on both sides, from the same float32 weights
    got = qwen3_4b_encodings["q4_k_m"]
    assert got.shape[0] == 1 and got.shape[1] > 5 and got.shape[2] == 2560 and torch.isfinite(got).all()
    assert torch.equal(got, qwen3_4b_encodings["native_dequantized"])


@needs_llama_cpp
def test_llama_cpp_q4_k_m_qwen3_4b_encodes_close_to_its_f16_source(qwen3_4b_encodings):
    got, reference = qwen3_4b_encodings["q4_k_m"], qwen3_4b_encodings["f16"]
    assert got.shape == reference.shape
    rms_error = float((got - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
    assert 0 < rms_error < Q4_K_M_VS_F16_RMS_TOLERANCE
    assert F.cosine_similarity(got[0], reference[0], dim=-1).min() > Q4_K_M_VS_F16_MIN_COSINE


# --- stable-diffusion.cpp's convert: Z-Image -------------------------------------------------------------


@dataclass(frozen=True)
class SdcppCase:
    sd_type: str
    prefixed: bool = False
    with_vae: bool = False

    def path(self) -> Path:
        return tool_files.sdcpp_zimage(self.sd_type, prefixed=self.prefixed, with_vae=self.with_vae)


SDCPP_CASES = {
    "f16": SdcppCase("f16"),
    "q8_0": SdcppCase("q8_0"),
    "q4_k": SdcppCase("q4_k"),
    "q8_0_prefixed_with_vae": SdcppCase("q8_0", prefixed=True, with_vae=True),
}


@dataclass
class ZImageRuns:
    """Loaded models and their one-step outputs, shared by the tests of this module."""

    comfy: object
    noise: torch.Tensor
    positive: torch.Tensor
    patchers: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def patcher(self, case: str):
        if case not in self.patchers:
            from comfyui_zimage_gguf.nodes import loaders

            if case == "native":
                factory = inprocess.factory_module("zimage_factory")
                path = factory.cached_model("zimage_safetensors", n_layers=1, seed=0, dtype=torch.float16)
                self.patchers[case] = self.comfy.sd.load_diffusion_model(str(path))
            else:
                self.patchers[case] = loaders.load_diffusion_gguf(str(SDCPP_CASES[case].path()), None, False, CPU)
        return self.patchers[case]

    def output(self, case: str) -> torch.Tensor:
        if case not in self.outputs:
            self.outputs[case] = inprocess.sample_steps(self.comfy, self.patcher(case), self.noise, self.positive)
        return self.outputs[case]


@pytest.fixture(scope="module")
def zimage(comfy):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(LATENT_SHAPE, generator=generator)
    positive = torch.randn(CAPTION, generator=generator) * 0.5
    runs = ZImageRuns(comfy, noise, positive)
    yield runs
    runs.patchers.clear()
    comfy.model_management.unload_all_models()
    gc.collect()


@needs_sd_cpp
@pytest.mark.parametrize("case", list(SDCPP_CASES))
def test_sdcpp_zimage_loads_as_comfy_zimage_with_its_stored_types(zimage, case):
    path = SDCPP_CASES[case].path()
    prefix = tool_files.SDCPP_PREFIX if SDCPP_CASES[case].prefixed else ""
    stored = {name[len(prefix):]: info for name, info in load_gguf(path).tensors.items() if name.startswith(prefix)}
    patcher = zimage.patcher(case)
    assert type(patcher.model.model_config).__name__ == "ZImage"
    state = patcher.model.diffusion_model.state_dict()
    assert set(state) == set(stored)
    for name, value in state.items():
        info = stored[name]
        if math.prod(info.shape) >= SMALL_TENSOR_ELEMENTS:
            assert gguf_type(value) == info.ggml_type, name
        else:
            assert gguf_type(value) is None and value.dtype.is_floating_point, name
    assert state["x_pad_token"].shape == state["cap_pad_token"].shape == (1, WIDTH)


@needs_sd_cpp
def test_sdcpp_f16_samples_exactly_like_the_native_safetensors(zimage):
    # sd.cpp's F16 file holds the safetensors file's fp16 values: loaded through the pack, the
    # same step must come out, bit for bit.
    assert torch.equal(zimage.output("f16"), zimage.output("native"))


@needs_sd_cpp
@pytest.mark.parametrize("case, tolerance", [("q8_0", Q8_0_VS_NATIVE_TOLERANCE), ("q4_k", Q4_K_VS_NATIVE_TOLERANCE)])
def test_sdcpp_quantized_sample_is_finite_and_close_to_native(zimage, case, tolerance):
    out = zimage.output(case)
    assert out.shape == LATENT_SHAPE and torch.isfinite(out).all()
    assert 0 < _relative_difference(out, zimage.output("native")) < tolerance


@needs_sd_cpp
def test_sdcpp_checkpoint_layout_with_vae_samples_exactly_like_the_split_file(zimage):
    # same weights, same quantization; only the names' prefix and the packed VAE differ
    assert torch.equal(zimage.output("q8_0_prefixed_with_vae"), zimage.output("q8_0"))
