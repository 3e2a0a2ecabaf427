"""`convert` and the Save Model as GGUF node against a real ComfyUI (in this process, on the CPU), and
the converted file in city96's ComfyUI-GGUF on a real server.

The source is the full-width (3840), one-layer-deep bf16 Z-Image safetensors of the test factory,
so ComfyUI's own detection sees Z-Image and the Q4_K_M rules give the real per-tensor types
(layers.0 matrices Q4_K/Q5_K/Q6_K; refiners, embedders and the final layer stay BF16). One euler
step on an 8x8 latent, as in test_comfy_models.py.

Run: COMFYUI_PATH=/tmp/ComfyUI flock /tmp/heavy.lock /tmp/comfy-venv/bin/python -m pytest -q \
     tests/integration/test_convert_comfy.py
city96's pack is taken from CITY96_GGUF_PATH (default /tmp/ComfyUI-GGUF); its test is skipped, with
that reason, where no checkout is there.
"""
from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from comfyui_zimage_gguf.cli.convert import convert
from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import gguf_type
from comfyui_zimage_gguf.ops.gguf_file.reader import load_gguf


import comfy_inprocess as inprocess  # noqa: E402  (tests/integration is on pytest's pythonpath)
import comfy_server  # noqa: E402
pytestmark = pytest.mark.skipif(not inprocess.COMFYUI_PATH, reason=inprocess.SKIP_REASON)

REPO_ROOT = Path(__file__).resolve().parents[2]
CITY96_PATH = Path(os.environ.get("CITY96_GGUF_PATH", "/tmp/ComfyUI-GGUF"))
CPU = torch.device("cpu")
LATENT_SHAPE = (1, 16, 8, 8)
CAPTION = (1, 12, 2560)
WIDTH = 3840
# One euler step, max |difference| / max |bf16 output|, measured with seed 0 on this model (ComfyUI
# 0.18.1, CPU): converted Q4_K_M 2.22% (layers.0 matrices Q4_K/Q5_K/Q6_K, the rest BF16/F32 as in the
# source); the Save node's Q8_0 with the LoRA merged vs the LoRA on bf16 0.20%, where the LoRA itself
# moves the output 6.6%. The bounds leave room for other seeds/BLAS and stay far below what a wrong
# dequantization, a wrong tensor name (~100%) or an unmerged LoRA (6.6%) give.
Q4_K_M_VS_BF16_TOLERANCE = 0.04
Q8_0_VS_BF16_TOLERANCE = 0.02
# city96's UnetLoaderGGUF and this pack's loader on the converted file, same graph: 1/255 measured
CITY96_VS_PACK_MAX_PIXEL_DIFFERENCE = 4
LORA_TARGETS = {  # attention, feed-forward (both in layers.0, quantized) and BF16-kept tensors
    "layers.0.attention.qkv": (3 * WIDTH, WIDTH),
    "layers.0.feed_forward.w2": (WIDTH, 10240),
    "noise_refiner.1.feed_forward.w1": (10240, WIDTH),
    "final_layer.linear": (64, WIDTH),
}


def _relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max())


@pytest.fixture(scope="module")
def comfy():
    try:
        module = inprocess.import_comfy()
    except inprocess.ComfyUnavailable as error:
        pytest.skip(str(error))
    yield module
    module.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def bf16_source() -> Path:
    factory = inprocess.factory_module("zimage_factory")
    return factory.cached_model("zimage_safetensors", n_layers=1, seed=0, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def converted_q4_k_m(bf16_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "zimage-test-1layer-converted-Q4_K_M.gguf"
    return convert(bf16_source, out, "Q4_K_M", progress=False)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(LATENT_SHAPE, generator=generator)
    positive = torch.randn(CAPTION, generator=generator) * 0.5
    return noise, positive


@pytest.fixture(scope="module")
def bf16_output(comfy, bf16_source, inputs):
    patcher = comfy.sd.load_diffusion_model(str(bf16_source))
    assert type(patcher.model.model_config).__name__ == "ZImage"
    out = inprocess.sample_steps(comfy, patcher, *inputs)
    del patcher
    comfy.model_management.unload_all_models()
    gc.collect()
    return out


# --- a. convert -> our loader: ComfyUI's Z-Image, close to the bf16 source ------------------------


def test_converted_q4_k_m_loads_as_comfy_zimage_and_samples_close_to_bf16(comfy, converted_q4_k_m, bf16_output,
                                                                         inputs):
    from comfyui_zimage_gguf.nodes import loaders

    gguf_file = load_gguf(converted_q4_k_m)
    try:
        stored = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
        assert gguf_file.metadata["general.architecture"] == "lumina2"
    finally:
        gguf_file.close()
    assert stored["layers.0.attention.qkv.weight"] == Q.Q5_K
    assert stored["layers.0.feed_forward.w2.weight"] == Q.Q6_K
    assert stored["layers.0.feed_forward.w1.weight"] == Q.Q4_K
    assert stored["noise_refiner.0.attention.qkv.weight"] == Q.BF16

    patcher = loaders.load_diffusion_gguf(str(converted_q4_k_m), None, False, CPU)
    assert type(patcher.model.model_config).__name__ == "ZImage"
    state = patcher.model.diffusion_model.state_dict()
    assert set(state) == set(stored)
    assert gguf_type(state["layers.0.feed_forward.w1.weight"]) == Q.Q4_K
    out = inprocess.sample_steps(comfy, patcher, *inputs)
    del patcher
    comfy.model_management.unload_all_models()
    gc.collect()
    difference = _relative_difference(out, bf16_output)
    print(f"\nconverted Q4_K_M vs bf16 source, one step: max|diff|/max|bf16| = {difference:.4f}")
    assert torch.isfinite(out).all()
    assert 0 < difference < Q4_K_M_VS_BF16_TOLERANCE


# --- c. Save node round trip: bf16 -> LoRA -> Save Q8_0 -> load -> = LoRA on bf16 ------------------


def test_save_node_round_trip_with_lora_matches_lora_on_bf16(comfy, bf16_source, bf16_output, inputs,
                                                            tmp_path_factory):
    import folder_paths

    from comfyui_zimage_gguf.nodes import loaders
    from comfyui_zimage_gguf.nodes.save_gguf import ZImageSaveModelGGUF

    folder = tmp_path_factory.mktemp("saved_models")
    lora_path = folder / "zimage_test_lora.safetensors"
    inprocess.write_lora(lora_path, LORA_TARGETS, rank=8, seed=1)
    lora = comfy.utils.load_torch_file(str(lora_path), safe_load=True)

    base = comfy.sd.load_diffusion_model(str(bf16_source))
    patched, _ = comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0.0)
    # sampling first patches the weights in place (ComfyUI keeps the originals in .backup): the
    # node must merge from the unpatched weights, not patch twice
    expected = inprocess.sample_steps(comfy, patched, *inputs)
    lora_effect = _relative_difference(expected, bf16_output)
    assert lora_effect > 0.01, lora_effect

    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    try:
        node = ZImageSaveModelGGUF()
        result = node.save(patched, "zimage_lora-Q8_0", "Q8_0")
        saved = folder / "zimage_lora-Q8_0.gguf"
        assert result["ui"]["text"] == [str(saved)] and saved.is_file()
        assert not list(folder.glob("*.partial"))
        assert ZImageSaveModelGGUF.INPUT_TYPES()["required"].keys() == {"model", "filename", "type"}
    finally:
        folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(folder))
    del patched, base
    comfy.model_management.unload_all_models()
    gc.collect()

    reloaded = loaders.load_diffusion_gguf(str(saved), None, False, CPU)
    assert type(reloaded.model.model_config).__name__ == "ZImage"
    assert gguf_type(reloaded.model.diffusion_model.state_dict()["layers.0.attention.qkv.weight"]) == Q.Q8_0
    out = inprocess.sample_steps(comfy, reloaded, *inputs)
    del reloaded
    comfy.model_management.unload_all_models()
    gc.collect()
    difference = _relative_difference(out, expected)
    print(f"\nsaved Q8_0 (LoRA merged) vs LoRA on bf16: {difference:.4f}; the LoRA itself moves the output "
          f"{lora_effect:.4f}")
    assert 0 < difference < Q8_0_VS_BF16_TOLERANCE
    assert difference < lora_effect / 4  # the merged LoRA is there (without it the difference is lora_effect)


# --- b. the converted file in city96's ComfyUI-GGUF (real server) ---------------------------------


@pytest.fixture(scope="module")
def converted_in_model_cache(converted_q4_k_m, model_cache):
    link = model_cache / "diffusion_models" / converted_q4_k_m.name
    link.unlink(missing_ok=True)
    link.symlink_to(converted_q4_k_m)
    yield link.name
    link.unlink(missing_ok=True)


def _image(server, entry: dict) -> np.ndarray:
    from PIL import Image

    images = entry["outputs"]["save"]["images"]
    assert len(images) == 1, images
    image = images[0]
    status, content = server.request(
        f"/view?filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}")
    assert status == 200, status
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"), dtype=np.float32)


def test_converted_file_loads_in_city96_comfyui_gguf(start_comfy_server, converted_in_model_cache,
                                                     qwen3_4b_gguf_name, flux_vae_name, run_timeout_s):
    if not (CITY96_PATH / "nodes.py").is_file():
        pytest.skip(f"no ComfyUI-GGUF checkout at {CITY96_PATH} (set CITY96_GGUF_PATH)")
    server = start_comfy_server("convert-city96", custom_nodes={"ComfyUI-GGUF": CITY96_PATH,
                                                                "comfyui_zimage_gguf": REPO_ROOT})
    listed = server.get_json("/object_info/UnetLoaderGGUF")["UnetLoaderGGUF"]["input"]["required"]["unet_name"][0]
    assert converted_in_model_cache in listed
    images = {}
    for loaders in ("city96", "pack"):
        workflow = comfy_server.zimage_workflow(loaders, converted_in_model_cache, qwen3_4b_gguf_name,
                                                flux_vae_name, size=64, steps=1)
        entry = server.run_prompt(workflow, run_timeout_s)
        assert entry.get("status", {}).get("status_str") == "success", f"{loaders}: {entry}\n{server.log_tail()}"
        images[loaders] = _image(server, entry)
    city96, pack = images["city96"], images["pack"]
    assert city96.shape == (64, 64, 3)
    assert city96.std() > 1  # an image, not a constant
    # both packs dequantize the same blocks; the images differ by at most float rounding
    difference = float(np.abs(city96 - pack).max())
    print(f"\ncity96 vs pack image of the converted Q4_K_M file: max |diff| = {difference:.0f}/255")
    assert difference <= CITY96_VS_PACK_MAX_PIXEL_DIFFERENCE


# --- d. a converted Qwen3 encoder through our text-encoder loader -----------------------------------


def test_converted_qwen3_encoder_encodes_like_the_llama_cpp_file(comfy, tmp_path):
    from comfyui_zimage_gguf.nodes import loaders

    # the factory's Q8_0 GGUF (gguf-py's bytes) and the same values as an HF-named float32 safetensors
    gguf_path, safetensors_path = inprocess.qwen3_encoder_files("qwen3_4b", n_layers=3, ggml_type="Q8_0")
    converted = convert(safetensors_path, tmp_path / "qwen3_4b-converted-Q8_0.gguf", "Q8_0", progress=False)

    def encode(path):
        clip = loaders.load_text_encoder(str(path), "lumina2", {}, CPU)
        tokens = clip.tokenize("a photo of a cat sitting on a red chair")
        return clip.encode_from_tokens_scheduled(tokens)[0][0]

    got, expected = encode(converted), encode(gguf_path)
    comfy.model_management.unload_all_models()
    gc.collect()
    assert got.shape[-1] == 2560 and torch.isfinite(got).all()
    assert torch.equal(got, expected)  # Q8_0 of Q8_0 values: the same bytes, the same conditioning


# --- e. a ComfyUI scaled-fp8 checkpoint: convert applies the scales as ComfyUI does ----------------


def _write_scaled_fp8(bf16_path: Path, out: Path) -> None:
    """The bf16 model as ComfyUI writes fp8 checkpoints today: every 2-D `.weight` float8_e4m3fn with
    a float32 `weight_scale` (absmax / 448) and a `comfy_quant` {"format": "float8_e4m3fn"}."""
    import json

    import safetensors.torch
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(bf16_path), framework="pt") as handle:
        for name in handle.keys():
            value = handle.get_tensor(name)
            if value.dim() == 2 and name.endswith(".weight") and min(value.shape) > 1:
                layer = name[:-len(".weight")]
                scale = (value.float().abs().max() / 448.0).reshape(())
                tensors[name] = (value.float() / scale).to(torch.float8_e4m3fn)
                tensors[f"{layer}.weight_scale"] = scale
                tensors[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                               dtype=torch.uint8)
            else:
                tensors[name] = value
    safetensors.torch.save_file(tensors, str(out))


def test_scaled_fp8_checkpoint_converts_to_what_comfy_computes_from_it(comfy, bf16_source, bf16_output, inputs,
                                                                      tmp_path):
    from comfyui_zimage_gguf.nodes import loaders

    fp8_path = tmp_path / "zimage-test-fp8_scaled.safetensors"
    _write_scaled_fp8(bf16_source, fp8_path)
    native = comfy.sd.load_diffusion_model(str(fp8_path))
    assert type(native.model.model_config).__name__ == "ZImage"
    expected = inprocess.sample_steps(comfy, native, *inputs)
    del native
    comfy.model_management.unload_all_models()
    gc.collect()

    converted = convert(fp8_path, tmp_path / "from-fp8-Q8_0.gguf", "Q8_0", progress=False)
    fp8_path.unlink()
    patcher = loaders.load_diffusion_gguf(str(converted), None, False, CPU)
    out = inprocess.sample_steps(comfy, patcher, *inputs)
    del patcher
    comfy.model_management.unload_all_models()
    gc.collect()
    difference = _relative_difference(out, expected)
    fp8_error = _relative_difference(expected, bf16_output)
    print(f"\nQ8_0 converted from scaled fp8 vs ComfyUI running the fp8 file: {difference:.4f} "
          f"(the fp8 file vs bf16: {fp8_error:.4f})")
    # measured (seed 0): 0.38% from ComfyUI's own fp8 run, whose distance to bf16 is 3.9%
    assert 0 < difference < Q8_0_VS_BF16_TOLERANCE
    assert difference < fp8_error  # unscaled (or wrongly scaled) weights would be far off
