"""Twenty text-encoder swaps on a real ComfyUI: memory stays flat and ComfyUI logs no "Potential
memory leak" (issue 20 item 10).

The pack's loader wrapped the text model's encode_token_weights with closures holding the model's
own bound method: a reference cycle, so a swapped-out encoder outlived its patcher until a full
garbage collection, which ComfyUI's cleanup_models_gc reported as a potential leak on every swap.
Here one Qwen3-4B-shaped GGUF is linked under two names, and prompts alternate between them (each
prompt loads an encoder and drops the other): RssAnon (anonymous memory, not the mapped file) is
sampled throughout; the peak of the last five swaps must stay within 3% of the first five.
"""
from __future__ import annotations

import time

import pytest

from comfy_server import MemorySampler

SWAPS = 20
FLAT_TOLERANCE = 1.03
LEAK_MESSAGE = "Potential memory leak detected"


def encode_only(clip_name: str, text: str) -> dict:
    return {
        "1": {"class_type": "ZImageGGUFTextEncoderLoader", "inputs": {"clip_name": clip_name, "type": "lumina2"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def test_twenty_encoder_swaps_keep_rss_anon_flat_and_log_no_leak(start_comfy_server, model_cache,
                                                                  qwen3_4b_gguf_name, tmp_path_factory, run_timeout_s):
    root = tmp_path_factory.mktemp("swap-models")
    for folder in ("diffusion_models", "text_encoders", "vae", "loras"):
        (root / folder).mkdir()
    source = (model_cache / "text_encoders" / qwen3_4b_gguf_name).resolve()
    names = ["swap-a-Qwen3-4B.gguf", "swap-b-Qwen3-4B.gguf"]
    for name in names:
        (root / "text_encoders" / name).symlink_to(source)
    server = start_comfy_server("encoder-swaps", model_root=root)
    peaks_kib = []
    with MemorySampler(server.pid, interval_s=0.05) as sampler:
        for swap in range(SWAPS):
            start = time.monotonic()
            entry = server.run_prompt(encode_only(names[swap % 2], f"a fox, swap {swap}"), timeout_s=run_timeout_s)
            assert entry.get("status", {}).get("status_str") == "success", f"{entry}\n{server.log_tail()}"
            peaks_kib.append(sampler.peak_kib(start, time.monotonic()))
    log = server.log_path.read_text(errors="replace")
    loads = log.count("Z-Image GGUF: swap-")
    warnings = log.count(LEAK_MESSAGE)
    first, last = max(peaks_kib[:5]), max(peaks_kib[-5:])
    print(f"\n{SWAPS} encoder swaps ({loads} loads logged, {source.stat().st_size / 2**20:.0f} MiB file): "
          f"peak RssAnon per swap (MiB) {[round(kib / 1024) for kib in peaks_kib]}; first five {first / 1024:.0f}, "
          f"last five {last / 1024:.0f} ({100 * (last / first - 1):+.1f}%); '{LEAK_MESSAGE}' logged {warnings} times")
    assert loads == SWAPS, "every prompt loaded its encoder (a swap)"
    assert last <= first * FLAT_TOLERANCE
    assert warnings == 0, [line for line in log.splitlines() if LEAK_MESSAGE in line][:3]
