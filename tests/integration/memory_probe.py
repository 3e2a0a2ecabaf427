"""Load one GGUF model the way ComfyUI's executor does and report what loading cost.

Runs as a script in ComfyUI's Python, one model per process, so the figures are this load's alone:
  python tests/integration/memory_probe.py {encoder,diffusion} FILE
Under `torch.inference_mode()` (ComfyUI runs every node in it) it calls the pack's loader, then
`comfy.model_management.load_models_gpu` as the sampler/encoder nodes do, and prints one JSON line:
RssAnon before and after (anonymous memory: what the process allocated, not the file mapping),
the seconds each step took, and how many whole weights the fallback dequantized.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # comfy_inprocess
import comfy_inprocess  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(kind: str, path: str) -> dict:
    comfy = comfy_inprocess.import_comfy()
    from comfyui_zimage_gguf.nodes import loaders
    from comfyui_zimage_gguf.ops.comfy_edge.comfy_layout import gguf_type, is_gguf_tensor
    from comfyui_zimage_gguf.ops.runtime.tensor import FALLBACKS

    result = {"kind": kind, "file": path, "file_bytes": Path(path).stat().st_size}
    if kind == "encoder":
        # Every text-encoder load builds a tokenizer (~70 MB of Python objects for Qwen's vocabulary),
        # GGUF or not: measure one (after a first, which also imports and caches) to tell it apart.
        from comfy.text_encoders.z_image import ZImageTokenizer

        ZImageTokenizer(embedding_directory=None, tokenizer_data={})
        before = status_kib("RssAnon")
        tokenizer = ZImageTokenizer(embedding_directory=None, tokenizer_data={})
        result["tokenizer_kib"] = status_kib("RssAnon") - before
        del tokenizer
    with torch.inference_mode():
        result["anon_before_kib"] = status_kib("RssAnon")
        start = time.perf_counter()
        if kind == "encoder":
            clip = loaders.load_text_encoder(path, "lumina2", None, torch.device("cpu"))
            patcher = clip.patcher
        else:
            patcher = loaders.load_diffusion_gguf(path, None, False, torch.device("cpu"))
        result["load_s"] = time.perf_counter() - start
        start = time.perf_counter()
        comfy.model_management.load_models_gpu([patcher])
        result["load_models_gpu_s"] = time.perf_counter() - start
        result["anon_after_kib"] = status_kib("RssAnon")
        params = list(patcher.model.parameters())
        result["quantized_params"] = sum(gguf_type(p) is not None for p in params)
        result["layout_params"] = sum(is_gguf_tensor(p) for p in params)  # ComfyUI QuantizedTensors
        result["float_param_bytes"] = sum(p.nbytes for p in params if gguf_type(p) is None)
    result["fallback_dequantizations"] = FALLBACKS.count
    result["fallback_ops"] = FALLBACKS.ops
    return result


if __name__ == "__main__":
    print("MEMORY_PROBE " + json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
