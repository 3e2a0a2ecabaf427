"""Encoder width vs diffusion model caption width: the tables and the messages users read."""
from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import pytest

from comfyui_zimage_gguf.errors import IncompatibleModelError
from comfyui_zimage_gguf.nodes.families.pairing import (
    DIFFUSION_MODELS, ENCODERS_BY_DISPLAY, KNOWN_ENCODERS, check_encoder_matches_model, describe_width,
)


def _mismatch(*args, **kwargs) -> str:
    with pytest.raises(IncompatibleModelError) as err:
        check_encoder_matches_model(*args, **kwargs)
    return str(err.value)


def test_z_image_with_qwen25_vl_names_both_files_widths_and_the_fix():
    message = _mismatch("qwen_2.5_vl_7b_fp8_scaled.safetensors", 3584, "z_image_turbo-Q4_K_M.gguf", "z_image", 2560)
    for fragment in (
        "qwen_2.5_vl_7b_fp8_scaled.safetensors", "z_image_turbo-Q4_K_M.gguf",  # both files
        "Z-Image expects Qwen3-4B, 2560 wide", "Qwen2.5-VL-7B, 3584 wide",  # both widths, both models
        "qwen_3_4b.safetensors", "Qwen3-4B-Instruct-2507-Q4_K_M.gguf",  # what to load instead
    ):
        assert fragment in message


@pytest.mark.parametrize(
    "family, display", [(family, display) for family, model in DIFFUSION_MODELS.items() for display in model.encoders]
)
def test_every_listed_encoder_fits_its_model(family, display):
    encoder = ENCODERS_BY_DISPLAY[display]
    caption_width = encoder.width * DIFFUSION_MODELS[family].stacked_layers
    assert check_encoder_matches_model("e.gguf", encoder.width, "m.gguf", family, caption_width, encoder.family) is encoder


def test_flux2_message_explains_the_stacked_layers():
    message = _mismatch("Qwen3-8B-Q4_K_M.gguf", 4096, "flux-2-klein-4b.gguf", "flux2", 7680)
    assert "Flux.2 expects Qwen3-4B, 2560 wide" in message
    assert "caption width 7680 = 3 x 2560" in message
    assert "Qwen3-8B or Llama-3.1-8B, 4096 wide" in message  # width alone cannot tell those two apart
    assert "qwen_3_4b.safetensors" in message


def test_encoder_of_unknown_width_is_still_explained():
    message = _mismatch("mystery.gguf", 1536, "z.gguf", "z_image", 2560)
    assert "an unknown model, 1536 wide" in message and "Qwen3-4B, 2560 wide" in message
    assert "mystery.gguf" in message and "z.gguf" in message


def test_model_caption_width_no_known_encoder_gives():
    message = _mismatch("q.gguf", 2560, "odd.gguf", "z_image", 3000)
    assert "a text encoder 3000 wide" in message and "Qwen3-4B, 2560 wide" in message
    assert "No known encoder gives caption width 3000" in message and "Qwen3-4B (2560)" in message


def test_caption_width_not_divisible_by_the_stack():
    message = _mismatch("q.gguf", 2560, "f.gguf", "flux2", 7681)
    assert "caption width 7681 is not a multiple of 3" in message
    assert "Qwen3-4B (7680), Qwen3-8B (12288), Mistral-Small-3.2-24B (15360)" in message


def test_unknown_model_family_is_checked_by_width_alone():
    assert check_encoder_matches_model("e.gguf", 2048, "m.gguf", "some_new_model", 2048) is None
    message = _mismatch("e.gguf", 1024, "m.gguf", "some_new_model", 2048)
    assert "some_new_model expects a text encoder 2048 wide" in message
    assert "Qwen3-0.6B, 1024 wide" in message
    assert "hidden size is 2048 (Qwen3-1.7B (Ovis 2.5) or Qwen2.5-3B)" in message


def test_same_width_other_family_is_refused_when_the_family_is_known():
    assert check_encoder_matches_model("g.gguf", 2560, "z.gguf", "z_image", 2560) is ENCODERS_BY_DISPLAY["Qwen3-4B"]
    message = _mismatch("gemma-3-4b.gguf", 2560, "z.gguf", "z_image", 2560, encoder_family="gemma3")
    assert "an unknown gemma3 model, 2560 wide" in message and "Z-Image expects Qwen3-4B" in message


def test_describe_width():
    assert describe_width(4096) == "Qwen3-8B or Llama-3.1-8B"
    assert describe_width(4096, "llama") == "Llama-3.1-8B"
    assert describe_width(777) == "an unknown model"


def test_family_and_width_identify_one_encoder():
    """comfy_te_model looks encoders up by (family, width): that pair must be unique."""
    counts = Counter((e.family, e.width) for e in KNOWN_ENCODERS)
    assert [key for key, n in counts.items() if n > 1] == []


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set")
def test_table_matches_comfyuis_config_dataclasses():
    """Widths, head sizes and config names as in comfy/text_encoders/llama.py (parsed, not imported)."""
    source = Path(os.environ["COMFYUI_PATH"], "comfy", "text_encoders", "llama.py").read_text()
    defaults = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            values = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    values[stmt.target.id] = ast.literal_eval(stmt.value)
                elif isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                    try:
                        values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                    except ValueError:
                        pass
            defaults[node.name] = values
    for encoder in KNOWN_ENCODERS:
        config = defaults[encoder.comfy_config]
        assert (config["hidden_size"], config["head_dim"]) == (encoder.width, encoder.head_dim), encoder.display
