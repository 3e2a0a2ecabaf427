"""The one model <-> encoder table, and the messages users read when a pair is wrong."""
from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import pytest

from comfyui_zimage_gguf.errors import IncompatibleModelError
from comfyui_zimage_gguf.model_families import diffusion
from comfyui_zimage_gguf.model_families.pairing import (
    CLIP_TYPE_ENCODERS, DIFFUSION_MODELS, ENCODERS_BY_DISPLAY, FIRST_LINE_LIMIT, KNOWN_ENCODERS, PAIRINGS,
    check_clip_type, check_encoder_matches_model, describe_width,
)


def _mismatch(*args, **kwargs) -> list[str]:
    with pytest.raises(IncompatibleModelError) as err:
        check_encoder_matches_model(*args, **kwargs)
    return str(err.value).splitlines()


def test_z_image_with_a_narrow_qwen3_names_the_model_the_widths_and_the_download():
    first, *details = _mismatch("Qwen3-1.7B-Q8_0.gguf", 2048, "z_image_turbo-Q4_K_M.gguf", "zimage", 2560,
                                encoder_family="qwen3", encoder_display="Qwen3-1.7B")
    assert first == ("Z-Image takes Qwen3-4B, 2560 wide, but Qwen3-1.7B-Q8_0.gguf is 2048 wide: "
                     "load a Qwen3-4B text encoder.")
    assert len(first) <= FIRST_LINE_LIMIT
    text = "\n".join(details)
    assert "Text encoder: Qwen3-1.7B-Q8_0.gguf (Qwen3-1.7B, 2048 wide)" in text
    assert "Diffusion model: z_image_turbo-Q4_K_M.gguf (Z-Image, caption width 2560" in text
    assert "Qwen3-4B-Instruct-2507-Q8_0.gguf" in text and "huggingface.co/unsloth/Qwen3-4B-Instruct-2507-GGUF" in text
    assert "into models/text_encoders" in text and "type 'lumina2'" in text


def test_z_image_message_never_offers_other_families_encoders():
    lines = _mismatch("qwen_2.5_vl_7b_fp8_scaled.safetensors", 3584, "z_image_turbo-Q4_K_M.gguf", "zimage", 2560)
    text = "\n".join(lines)
    for other in ("Gemma", "Lumina", "Mistral", "Qwen2.5-VL-7B-Instruct GGUF", "lumina2 expects"):
        assert other not in text, text


def test_a_long_file_name_keeps_the_first_line_short():
    long_name = "Qwen3-1.7B-abliterated-uncensored-instruct-2507-imatrix-IQ4_XS-by-someone.gguf"
    first, *details = _mismatch(long_name, 2048, "z_image_turbo-Q4_K_M.gguf", "zimage", 2560)
    assert len(first) <= FIRST_LINE_LIMIT
    assert first.startswith("Z-Image takes Qwen3-4B, 2560 wide, but the text encoder is 2048 wide")
    assert long_name in details[0]  # the file is still named, on the details line


@pytest.mark.parametrize("model", [m for m in PAIRINGS if m.encoders], ids=lambda m: m.family)
def test_every_listed_encoder_fits_its_model(model):
    for display in model.encoders:
        encoder = ENCODERS_BY_DISPLAY[display]
        caption_width = encoder.width * model.stacked_layers
        assert check_encoder_matches_model("e.gguf", encoder.width, "m.gguf", model.family, caption_width,
                                           encoder.family) is encoder


def test_flux2_message_explains_the_stacked_layers():
    first, *details = _mismatch("Qwen3-8B-Q4_K_M.gguf", 4096, "flux-2-klein-4b.gguf", "flux2", 7680)
    assert first == "FLUX.2 takes Qwen3-4B, 2560 wide, but Qwen3-8B-Q4_K_M.gguf is 4096 wide: load a Qwen3-4B text encoder."
    text = "\n".join(details)
    assert "caption width 7680 = 3 x 2560" in text
    assert "Qwen3-8B or Llama-3.1-8B, 4096 wide" in text  # width alone cannot tell those two apart
    assert "type 'flux2'" in text


def test_encoder_of_unknown_width_is_still_explained():
    first, *details = _mismatch("mystery.gguf", 1536, "z.gguf", "zimage", 2560)
    assert first == "Z-Image takes Qwen3-4B, 2560 wide, but mystery.gguf is 1536 wide: load a Qwen3-4B text encoder."
    assert "mystery.gguf (an unknown model, 1536 wide)" in details[0]


def test_model_caption_width_no_known_encoder_gives():
    first, *details = _mismatch("q.gguf", 2560, "odd.gguf", "zimage", 3000)
    assert first == "odd.gguf has caption width 3000, which no Z-Image text encoder gives: check that it is the diffusion model you meant."
    assert "Qwen3-4B (2560)" in details[-1]


def test_caption_width_not_divisible_by_the_stack():
    first, *details = _mismatch("q.gguf", 2560, "f.gguf", "flux2", 7681)
    assert "7681 is not a multiple of 3" in "\n".join(details)
    assert "Qwen3-4B (7680), Qwen3-8B (12288), Mistral-Small-3.2-24B (15360)" in details[-1]


def test_unknown_model_family_is_checked_by_width_alone():
    assert check_encoder_matches_model("e.gguf", 2048, "m.gguf", "nextdit", 2048) is None
    first, *details = _mismatch("e.gguf", 1024, "m.gguf", "nextdit", 2048, model_display="NextDiT")
    assert first == "NextDiT takes a text encoder 2048 wide, but e.gguf is 1024 wide: load one 2048 wide."
    assert "Qwen3-0.6B, 1024 wide" in details[0]
    assert details[-1] == "Text encoders 2048 wide: Qwen3-1.7B or Qwen2.5-3B."


def test_same_width_other_family_is_refused_when_the_family_is_known():
    assert check_encoder_matches_model("g.gguf", 2560, "z.gguf", "zimage", 2560) is ENCODERS_BY_DISPLAY["Qwen3-4B"]
    first, *_ = _mismatch("gemma-3-4b.gguf", 2560, "z.gguf", "zimage", 2560, encoder_family="gemma3")
    assert first == ("Z-Image takes Qwen3-4B, but gemma-3-4b.gguf is an unknown gemma3 model of the same width: "
                     "load a Qwen3-4B text encoder.")
    assert len(first) <= FIRST_LINE_LIMIT


def test_clip_type_check_names_the_model_the_type_is_for():
    with pytest.raises(IncompatibleModelError) as err:
        check_clip_type("Qwen3-1.7B-Q8_0.gguf", "lumina2", ENCODERS_BY_DISPLAY["Qwen3-1.7B"])
    first, *details = str(err.value).splitlines()
    assert first == ("Type 'lumina2' is for Z-Image, which takes Qwen3-4B; Qwen3-1.7B-Q8_0.gguf is Qwen3-1.7B: "
                     "load a Qwen3-4B text encoder.")
    assert len(first) <= FIRST_LINE_LIMIT
    # lumina2 is also Lumina 2's type, so its encoder may be named, in the details
    assert "Type 'lumina2' serves: Z-Image (Qwen3-4B); Z-Image (pixel space) (Qwen3-4B); Lumina Image 2.0 (Gemma-2-2B)." in details
    assert check_clip_type("q.gguf", "lumina2", ENCODERS_BY_DISPLAY["Qwen3-4B"]) is None
    assert check_clip_type("q.gguf", "ovis", ENCODERS_BY_DISPLAY["Qwen3-1.7B"]) is None  # type not in the table


def test_clip_type_check_points_to_the_right_type_for_the_encoder():
    with pytest.raises(IncompatibleModelError) as err:
        check_clip_type("qwen25vl.gguf", "lumina2", ENCODERS_BY_DISPLAY["Qwen2.5-VL-7B"])
    assert "For Qwen-Image with this encoder, pick type 'qwen_image'." in str(err.value)


def test_one_table_one_family_spelling():
    """Every detection family with a caption width is a row of PAIRINGS, under the same name; the
    CLIP-type table and the detection info are derived from it."""
    families = {s.family for s in diffusion.DIFFUSION_SIGNATURES} - {"nextdit"}
    assert families <= set(DIFFUSION_MODELS), families - set(DIFFUSION_MODELS)
    assert CLIP_TYPE_ENCODERS["lumina2"] == ("Qwen3-4B", "Gemma-2-2B")
    assert CLIP_TYPE_ENCODERS["flux2"] == ("Qwen3-4B", "Qwen3-8B", "Mistral-Small-3.2-24B")
    for model in PAIRINGS:
        assert all(e in ENCODERS_BY_DISPLAY for e in model.encoders), model
    import comfyui_zimage_gguf.nodes.loaders as loaders
    assert not hasattr(loaders, "COMPAT_FAMILY") and not hasattr(loaders, "CLIP_TYPE_ENCODERS")
    assert not hasattr(loaders, "_ENCODER_FILES_BY_WIDTH")


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
