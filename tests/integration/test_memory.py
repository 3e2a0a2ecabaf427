"""GGUF weights stay quantized where ComfyUI runs them: memory of loads and of real server runs.

ComfyUI executes every node under `torch.inference_mode()`; a weight that falls back to a float
copy there costs its dequantized size in anonymous memory (RssAnon: what the process allocated,
not the file it maps). Two levels:
- a load, as ComfyUI's executor does it (memory_probe.py, one model per process): the pack's loader
  then `load_models_gpu`, under inference mode; RssAnon may grow by at most 10% of the file; on
  both load paths (ComfyUI's layout layer, and the pack's own layers forced with
  ZIMAGE_GGUF_FORCE_PACK_LAYERS=1);
- a whole run queued with POST /prompt on a fresh real server (strict tripwire on), with RssAnon of
  the server process sampled while each node runs.

Run: COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python -m pytest tests/integration/test_memory.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
import comfy_server  # noqa: E402
PROBE = HERE / "memory_probe.py"
LOAD_GROWTH_LIMIT = 0.10  # of the file's size
# A whole run may also hold the tokenizer, activations and the per-layer dequantized weight (one
# buffer of the largest matrix in the compute dtype): measured +105 MiB (encoder nodes) and
# +110-117 MiB (diffusion nodes) for these files, Q8_0 and Q4_K alike. Weights that fell back to
# floats would add at least their bf16 size, 1.9x (Q8_0) to 3.6x (Q4_K) the file.
RUN_GROWTH_LIMIT = 0.5  # of the file's size
KIB = 1024


LOAD_PATHS = ("layout", "pack_layers")


def probe(kind: str, path: Path, load_path: str = "layout") -> dict:
    env = dict(os.environ, ZIMAGE_GGUF_FORCE_PACK_LAYERS="1" if load_path == "pack_layers" else "0")
    process = subprocess.run([sys.executable, str(PROBE), kind, str(path)], capture_output=True, text=True, env=env)
    for line in process.stdout.splitlines():
        if line.startswith("MEMORY_PROBE "):
            result = json.loads(line[len("MEMORY_PROBE "):])
            # every quantized weight is of the path's kind (ComfyUI QuantizedTensors only on "layout")
            expected = result["quantized_params"] if load_path == "layout" else 0
            assert result["layout_params"] == expected, (load_path, result)
            return result
    raise AssertionError(f"memory probe failed (exit {process.returncode}):\n{process.stderr[-3000:]}")


@pytest.mark.parametrize("load_path", LOAD_PATHS)
@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0"])
def test_loading_an_encoder_under_inference_mode_keeps_it_quantized(quantized_model_names, ggml_type, load_path):
    files = quantized_model_names(ggml_type)
    result = probe("encoder", files["clip_path"], load_path)
    growth = (result["anon_after_kib"] - result["anon_before_kib"] - result["tokenizer_kib"]) * KIB
    print(f"\n{ggml_type} Qwen3-4B-shaped encoder, {load_path} ({result['file_bytes'] / 2**20:.0f} MiB): RssAnon +"
          f"{growth / 2**20:.1f} MiB besides its tokenizer ({result['tokenizer_kib'] / KIB:.1f} MiB); "
          f"load {result['load_s']:.2f} s, load_models_gpu {result['load_models_gpu_s']:.2f} s")
    assert result["fallback_dequantizations"] == 0, result["fallback_ops"]
    assert result["quantized_params"] > 0 and result["float_param_bytes"] < 2**20
    assert growth <= LOAD_GROWTH_LIMIT * result["file_bytes"], result


@pytest.mark.parametrize("load_path", LOAD_PATHS)
@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0"])
def test_loading_a_zimage_gguf_under_inference_mode_keeps_it_quantized(quantized_model_names, ggml_type, load_path):
    files = quantized_model_names(ggml_type)
    result = probe("diffusion", files["unet_path"], load_path)
    growth = (result["anon_after_kib"] - result["anon_before_kib"]) * KIB
    print(f"\n{ggml_type} Z-Image, {load_path} ({result['file_bytes'] / 2**20:.0f} MiB): RssAnon +{growth / 2**20:.1f} MiB; "
          f"load {result['load_s']:.2f} s, load_models_gpu {result['load_models_gpu_s']:.2f} s")
    assert result["fallback_dequantizations"] == 0, result["fallback_ops"]
    assert result["quantized_params"] > 0
    assert growth <= LOAD_GROWTH_LIMIT * result["file_bytes"], result


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_K"])
def test_server_run_memory_stays_near_the_quantized_size(start_comfy_server, quantized_model_names, flux_vae_name,
                                                         ggml_type):
    files = quantized_model_names(ggml_type)
    server = start_comfy_server(f"memory-{ggml_type}")
    workflow = comfy_server.zimage_workflow("pack", files["unet"], files["clip"], flux_vae_name, size=64, steps=2)
    trace = server.run_traced(workflow, timeout_s=1800)
    assert trace.status == "success", f"{trace.error}\n{server.log_tail()}"
    clip_bytes, unet_bytes = (files[k].stat().st_size for k in ("clip_path", "unet_path"))
    encoder = max(trace.anon_growth_kib(node) for node in (comfy_server.CLIP_NODE, comfy_server.ENCODE_NODE)) * KIB
    diffusion = max(trace.anon_growth_kib(node) for node in (comfy_server.UNET_NODE, comfy_server.SAMPLER_NODE)) * KIB
    print(f"\n{ggml_type} server run: encoder nodes RssAnon +{encoder / 2**20:.0f} MiB "
          f"(file {clip_bytes / 2**20:.0f} MiB); diffusion nodes +{diffusion / 2**20:.0f} MiB "
          f"(file {unet_bytes / 2**20:.0f} MiB); peak RssAnon {trace.anon_peak_kib / KIB:.0f} MiB, "
          f"VmHWM {trace.vmhwm_kib / KIB:.0f} MiB")
    assert encoder <= RUN_GROWTH_LIMIT * clip_bytes
    assert diffusion <= RUN_GROWTH_LIMIT * unet_bytes
