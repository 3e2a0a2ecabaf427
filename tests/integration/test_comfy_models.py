"""The loader nodes inside a real ComfyUI (in this process, on the CPU), with full-width generated models.

Z-Image files are one transformer layer deep but full width (3840), so ComfyUI's own detection
sees Z-Image; text encoders are full-width Qwen3 files three layers deep. Every forward pass
dequantizes ~0.9 G weights, so sampling is one euler step on an 8x8 latent and the models and
their outputs are loaded/computed once per module and shared by the tests.

Every test runs on both load paths (the `session` fixture's params): "layout", ComfyUI's own
layers over GGUF weights as comfy-kitchen QuantizedTensors (ComfyUI >= 0.8.0 with comfy-kitchen),
and "pack_layers", the fallback through the pack's own dequantizing layers, forced here with
ZIMAGE_GGUF_FORCE_PACK_LAYERS=1.

Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m pytest tests/integration/test_comfy_models.py
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q, GGUFReader, quants

from comfyui_zimage_gguf.errors import IncompatibleModelError
from comfyui_zimage_gguf.ops.runtime.state_dict import SMALL_TENSOR_ELEMENTS
from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import gguf_type, is_gguf_tensor
from comfyui_zimage_gguf.ops.comfy_edge.comfy_ops import FORCE_PACK_LAYERS_ENV
from comfyui_zimage_gguf.ops.runtime.tensor import QuantizedTensor as PackQuantizedTensor


import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)

CPU = torch.device("cpu")
LATENT_SHAPE = (1, 16, 8, 8)  # a 64x64 image: the cost of a step is the weights, not the tokens
CAPTION = (1, 12, 2560)
WIDTH = 3840
SDCPP_PREFIX = "model.diffusion_model."
# Q8_0 rounds each weight to one of 255 steps of its 32-block's scale (~0.5% RMS of a Gaussian
# weight); through five full-width blocks and one step that measured 0.85% of the output's largest
# value (0.78% mean relative error; seed 0). A wrong dequantization gives errors near 100%.
Q8_0_VS_NATIVE_TOLERANCE = 0.02
LORA_TARGETS = {  # module -> (out, in) of its weight; attention, feed-forward and the final layer
    "layers.0.attention.qkv": (3 * WIDTH, WIDTH),
    "layers.0.feed_forward.w2": (WIDTH, 10240),
    "noise_refiner.1.feed_forward.w1": (10240, WIDTH),
    "context_refiner.0.attention.out": (WIDTH, WIDTH),
    "final_layer.linear": (64, WIDTH),
}


@dataclass(frozen=True)
class GGUFCase:
    matrix_type: Q
    style: str = "city96"
    vector_type: Q | None = None  # None: the style's default
    pad_type: Q | None = None
    flat_pads: bool = False  # pad tokens stored [3840] in a city96 file (written by comfy_inprocess)
    sampled: bool = False  # also run a full sampling step (others get a single-layer forward)

    def path(self) -> Path:
        if self.flat_pads:
            return inprocess.zimage_city96_flat_pads_gguf(self.matrix_type.name, self.pad_type.name)
        rule = {"matrix": self.matrix_type.name}
        if self.vector_type:
            rule["vector"] = self.vector_type.name
        if self.pad_type:
            rule["pad"] = self.pad_type.name
        factory = inprocess.factory_module("zimage_factory")
        return factory.cached_model("zimage_gguf", n_layers=1, style=self.style, type_rule=rule, seed=0)


CASES = {
    # every tensor F16, as the F16 safetensors file below holds them: the exact-match reference
    "f16": GGUFCase(Q.F16, vector_type=Q.F16, pad_type=Q.F16, sampled=True),
    "q8_0": GGUFCase(Q.Q8_0, sampled=True),  # F32 norms/biases and [1, 3840] F32 pads
    "q5_1_bf16_pads": GGUFCase(Q.Q5_1, pad_type=Q.BF16),
    "q4_0": GGUFCase(Q.Q4_0),
    "q4_k": GGUFCase(Q.Q4_K),
    "q4_k_flat_f32_pads": GGUFCase(Q.Q4_K, pad_type=Q.F32, flat_pads=True),
    # stable-diffusion.cpp: no metadata, prefixed names, norms and [3840] pads quantized Q8_0
    "sdcpp_q8_0": GGUFCase(Q.Q8_0, style="sdcpp", sampled=True),
}


@dataclass
class Session:
    """ComfyUI, the loaded models and the sampled outputs, shared by every test of this module."""

    comfy: object
    loaders: object
    plan: str  # "layout" or "pack_layers"
    lora_path: Path
    noise: torch.Tensor
    positive: torch.Tensor
    patchers: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def gguf(self, case: str):
        if case not in self.patchers:
            self.patchers[case] = self.loaders.load_diffusion_gguf(str(CASES[case].path()), None, False, CPU)
        return self.patchers[case]

    def native(self):
        if "native" not in self.patchers:
            factory = inprocess.factory_module("zimage_factory")
            path = factory.cached_model("zimage_safetensors", n_layers=1, seed=0, dtype=torch.float16)
            self.patchers["native"] = self.comfy.sd.load_diffusion_model(str(path))
        return self.patchers["native"]

    def with_lora(self, name: str):
        key = f"{name}+lora"
        if key not in self.patchers:
            base = self.native() if name == "native" else self.gguf(name)
            lora = self.comfy.utils.load_torch_file(str(self.lora_path), safe_load=True)
            self.patchers[key], _ = self.comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0.0)
        return self.patchers[key]

    def sample(self, patcher) -> torch.Tensor:
        return inprocess.sample_steps(self.comfy, patcher, self.noise, self.positive)

    def output(self, name: str) -> torch.Tensor:
        """One sampling step of a named model (`native`, a case, or either with `+lora`), computed once."""
        if name not in self.outputs:
            base, _, lora = name.partition("+")
            if lora:
                patcher = self.with_lora(base)
            else:
                patcher = self.native() if base == "native" else self.gguf(base)
            self.outputs[name] = self.sample(patcher)
        return self.outputs[name]


LOAD_PATHS = ("layout", "pack_layers")


@pytest.fixture(scope="module", params=LOAD_PATHS)
def session(request, tmp_path_factory):
    try:
        comfy = inprocess.import_comfy()
    except inprocess.ComfyUnavailable as error:
        pytest.skip(str(error))
    from comfyui_zimage_gguf.nodes import loaders
    from comfyui_zimage_gguf.ops.comfy_edge import comfy_layout

    if request.param == "layout" and not comfy_layout.available():
        pytest.skip("this ComfyUI has no comfy-kitchen quantized tensors: only the pack's layers can load")
    previous = os.environ.get(FORCE_PACK_LAYERS_ENV)
    os.environ[FORCE_PACK_LAYERS_ENV] = "1" if request.param == "pack_layers" else "0"

    lora_path = tmp_path_factory.mktemp("lora") / "zimage_test_lora.safetensors"
    inprocess.write_lora(lora_path, LORA_TARGETS, rank=8, seed=1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(LATENT_SHAPE, generator=generator)
    positive = torch.randn(CAPTION, generator=generator) * 0.5
    state = Session(comfy, loaders, request.param, lora_path, noise, positive)
    try:
        yield state
    finally:
        if previous is None:
            os.environ.pop(FORCE_PACK_LAYERS_ENV, None)
        else:
            os.environ[FORCE_PACK_LAYERS_ENV] = previous
        state.patchers.clear()
        comfy.model_management.unload_all_models()
        gc.collect()


def _on_load_path(session, value) -> bool:
    """A quantized weight of the kind the session's load path gives (never the other kind)."""
    if session.plan == "layout":
        return is_gguf_tensor(value)
    return isinstance(value, PackQuantizedTensor)


def _stored_tensors(path: Path, style: str) -> dict[str, tuple[Q, np.ndarray, tuple]]:
    """{ComfyUI name: (stored type, stored data, torch-order stored shape)} read with gguf-py."""
    stored = {}
    for tensor in GGUFReader(str(path)).tensors:
        name = tensor.name[len(SDCPP_PREFIX):] if style == "sdcpp" else tensor.name
        shape = tuple(int(d) for d in reversed(tensor.shape))
        stored[name] = (Q(tensor.tensor_type), tensor.data, shape)
    return stored


def _dequantized(stored) -> torch.Tensor:
    ggml_type, data, shape = stored
    return torch.from_numpy(np.array(quants.dequantize(data, ggml_type), dtype=np.float32).reshape(shape))


# --- 1. every layout and type loads as ComfyUI's Z-Image, quantized, and runs ------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_gguf_loads_as_comfy_zimage_with_quantized_weights(session, case):
    spec = CASES[case]
    patcher = session.gguf(case)
    assert type(patcher.model.model_config).__name__ == "ZImage"
    stored = _stored_tensors(spec.path(), spec.style)
    state = patcher.model.diffusion_model.state_dict()
    assert set(state) == set(stored)
    for name, value in state.items():
        assert value.dtype.is_floating_point, f"{name} reports {value.dtype}"
        ggml_type, data, shape = stored[name]
        if int(np.prod(shape)) >= SMALL_TENSOR_ELEMENTS:
            assert gguf_type(value) == ggml_type, f"{name}: {value!r}"
            assert _on_load_path(session, value), f"{name}: {type(value).__name__} on the {session.plan} path"
        else:
            assert gguf_type(value) is None, name
    matrix_types = {stored[n][0] for n in stored if n.startswith("layers.0.") and len(stored[n][2]) == 2}
    assert matrix_types == {spec.matrix_type}
    for pad in ("x_pad_token", "cap_pad_token"):
        assert state[pad].shape == (1, WIDTH)
        torch.testing.assert_close(state[pad], _dequantized(stored[pad]).reshape(1, WIDTH), rtol=0, atol=0)

    # the final projection, run by ComfyUI's module, against gguf-py's dequantization of the file
    x = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = patcher.model.diffusion_model.final_layer.linear(x)
    expected = F.linear(x, _dequantized(stored["final_layer.linear.weight"]),
                        _dequantized(stored["final_layer.linear.bias"]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [name for name, spec in CASES.items() if spec.sampled])
def test_gguf_sampling_step_is_finite(session, case):
    out = session.output(case)
    assert out.shape == LATENT_SHAPE
    assert torch.isfinite(out).all()
    assert out.std() > 0.1  # a real denoised latent, not zeros


# --- 2. against the same weights loaded natively by ComfyUI -----------------------------------------


def test_f16_gguf_samples_exactly_like_native_safetensors(session):
    # Both files hold the same fp16 values; on the CPU ComfyUI computes in fp32 from either, so
    # the dequantize-per-layer path must give the very same latent.
    assert type(session.native().model.model_config).__name__ == "ZImage"
    assert torch.equal(session.output("f16"), session.output("native"))


def test_q8_0_gguf_sample_is_close_to_native(session):
    native = session.output("native")
    difference = (session.output("q8_0") - native).abs().max() / native.abs().max()
    assert 0 < difference < Q8_0_VS_NATIVE_TOLERANCE


# --- 3. LoRA through ComfyUI's own LoraLoader code --------------------------------------------------


def test_lora_patches_every_target(session):
    patched = session.with_lora("f16")
    assert set(patched.patches) == {f"diffusion_model.{m}.weight" for m in LORA_TARGETS}


def test_lora_changes_gguf_output_exactly_as_native(session):
    gguf_change = session.output("f16+lora") - session.output("f16")
    native_change = session.output("native+lora") - session.output("native")
    assert gguf_change.abs().max() > 1e-2 * session.output("f16").abs().max()  # the LoRA does something
    assert torch.equal(gguf_change, native_change)


def test_lora_keeps_gguf_weights_quantized_and_patches_at_dequant(session):
    patcher = session.with_lora("f16")
    session.output("f16+lora")
    session.comfy.model_management.load_models_gpu([patcher])  # what sampling left loaded
    for module_name in LORA_TARGETS:
        module = patcher.get_model_object(f"diffusion_model.{module_name}")
        assert gguf_type(module.weight) == Q.F16
        assert any(isinstance(f, session.comfy.model_patcher.LowVramPatch) for f in module.weight_function)


def test_sampling_without_lora_again_restores_output(session):
    session.output("f16+lora")
    base = session.gguf("f16")
    assert torch.equal(session.sample(base), session.output("f16"))
    for module_name in LORA_TARGETS:
        assert base.get_model_object(f"diffusion_model.{module_name}").weight_function == []


# --- 4. ComfyUI's lowvram (partial load) path -------------------------------------------------------


def _partial_budget(patcher) -> int:
    return patcher.model_size() // 3


def test_partial_load_gives_full_load_output(session):
    base = session.gguf("f16")
    expected = session.output("f16")
    session.comfy.model_management.unload_all_models()  # a loaded model is kept as it is
    with inprocess.capped_weight_memory(base, _partial_budget(base)):
        out = session.sample(base)
        assert base.model.model_lowvram
        assert 0 < base.model.model_loaded_weight_memory < base.model_size()
    assert torch.equal(out, expected)


def test_partial_load_with_lora_gives_full_load_output(session):
    expected = session.output("f16+lora")
    lora = session.with_lora("f16")
    session.comfy.model_management.unload_all_models()
    with inprocess.capped_weight_memory(lora, _partial_budget(lora)):
        out = session.sample(lora)
        assert lora.model.model_lowvram
        # LoRA keys on offloaded modules go through ComfyUI's LowVramPatch, the rest through ours
        patch_kinds = {type(f).__name__ for m in LORA_TARGETS
                       for f in lora.get_model_object(f"diffusion_model.{m}").weight_function}
        assert patch_kinds == {"LowVramPatch", "QuantizedWeightPatch"}
        assert lora.model.lowvram_patch_counter > 0
    assert torch.equal(out, expected)


# --- 5. text encoders --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_4b_files(session):
    return inprocess.qwen3_encoder_files("qwen3_4b", n_layers=3, ggml_type="Q8_0")


def _encode(clip, text="a photo of a cat sitting on a red chair"):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def test_qwen3_4b_gguf_encoder_matches_native(session, qwen3_4b_files):
    gguf_path, safetensors_path = qwen3_4b_files
    clip = session.loaders.load_text_encoder(str(gguf_path), "lumina2", {}, CPU)
    embedding = clip.cond_stage_model.qwen3_4b.transformer.model.embed_tokens.weight
    assert gguf_type(embedding) == Q.Q8_0
    assert _on_load_path(session, embedding), f"{type(embedding).__name__} on the {session.plan} path"
    got = _encode(clip)
    assert got.shape[0] == 1 and got.shape[2] == 2560 and got.shape[1] > 5
    assert torch.isfinite(got).all()
    # ComfyUI builds a 36-layer Qwen3-4B unless told the depth; the file is 3 layers deep.
    native = session.comfy.sd.load_clip(
        [str(safetensors_path)], clip_type=session.comfy.sd.CLIPType.LUMINA2,
        model_options={"qwen3_4b_model_config": {"num_hidden_layers": 3}})
    # Same fp32 values (Q8_0 dequantizes exactly in fp32) and fp32 compute on both sides.
    assert torch.equal(got, _encode(native))
    assert gguf_type(clip.cond_stage_model.qwen3_4b.transformer.model.embed_tokens.weight) is not None


def test_narrow_encoder_with_zimage_fails_before_the_model_runs(session):
    gguf_path, _ = inprocess.qwen3_encoder_files("qwen3_06b", n_layers=2, ggml_type="Q8_0", with_safetensors=False)
    # ComfyUI builds a Qwen3-0.6B (Anima's encoder) for this file; its features are 1024 wide.
    clip = session.loaders.load_text_encoder(str(gguf_path), "stable_diffusion", {}, CPU)
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
    assert conditioning[0][0].shape[-1] == 1024
    model = session.gguf("q8_0")
    latent = torch.zeros(LATENT_SHAPE)
    with pytest.raises(IncompatibleModelError) as raised:
        session.comfy.sample.sample(model, session.noise, 1, 1.0, "euler", "simple", conditioning, conditioning,
                                    latent, denoise=1.0, seed=0, disable_pbar=True)
    message = str(raised.value)
    assert "1024" in message and "2560" in message and gguf_path.name in message
    assert "mat1 and mat2" not in message


def test_wrong_clip_type_is_refused_at_load(session, qwen3_4b_files):
    # the first line names the type and what it takes; the details say which type fits this encoder
    with pytest.raises(IncompatibleModelError, match=r"(?s)^Type 'qwen_image' .*Qwen2\.5-VL-7B.*pick type 'lumina2'") as raised:
        session.loaders.load_text_encoder(str(qwen3_4b_files[0]), "qwen_image", {}, CPU)
    assert qwen3_4b_files[0].name in str(raised.value)


# --- 6. memory is returned on unload ---------------------------------------------------------------


def test_repeated_load_unload_does_not_grow_memory(session):
    # Reading every page of the weights makes a mapping that outlives the model visible in RSS
    # (~0.5 GB per load of this file), and in /proc/self/maps.
    allowed_growth = 64 * 2**20
    path = CASES["q4_0"].path()
    session.patchers.pop("q4_0", None)
    mm = session.comfy.model_management
    rss_after = []
    for _ in range(3):
        patcher = session.loaders.load_diffusion_gguf(str(path), None, False, CPU)
        mm.load_models_gpu([patcher])
        touched = sum(inprocess.touch_pages(p) for p in patcher.model.diffusion_model.parameters())
        assert touched > 0
        assert str(path) in inprocess.mapped_files()
        del patcher
        mm.unload_all_models()
        gc.collect()
        assert str(path) not in inprocess.mapped_files()
        rss_after.append(inprocess.rss_bytes())
    assert rss_after[2] - rss_after[0] < allowed_growth, [r / 2**20 for r in rss_after]
