"""What a user of a real ComfyUI server sees: errors as the editor receives them, loader lists, templates.

- A wrong encoder stops with `ZImageGGUF.IncompatibleModelError` and a short first line naming the
  model, both widths and the fix, the same over the websocket and in /history.
- With two encoders of one width loaded, the message names the one whose conditioning was used.
- Each loader lists only its own kind of GGUF; /object_info time with 50 more GGUFs is printed.
- ComfyUI offers only the UI-format workflow as a template, with its thumbnail.
"""
from __future__ import annotations

import json
import statistics
import time
import urllib.parse
from pathlib import Path

import pytest

from comfy_server import node_of_type, shipped_workflow  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_zimage_gguf"  # the fixture's symlink name in custom_nodes/
DIFFUSION = "ZImageGGUFDiffusionModelLoader"
ENCODER = "ZImageGGUFTextEncoderLoader"


def small_workflow(unet: str, clip: str, vae: str, clip_type: str = "lumina2") -> dict:
    return shipped_workflow(unet, clip, vae, clip_type, size=64)


def history_error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    return error


def list_of(server, node: str, input_name: str) -> list[str]:
    return server.get_json(f"/object_info/{node}")[node]["input"]["required"][input_name][0]


def test_mismatch_error_as_the_editor_receives_it(comfy_server, zimage_gguf_name, qwen3_narrow_gguf_name,
                                                  flux_vae_name, run_timeout_s):
    # "ovis" is the type ComfyUI builds a 2048-wide Qwen3 for: the encoder loads and encodes, and the
    # mismatch shows where its features meet the Z-Image model.
    workflow = small_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name, clip_type="ovis")
    trace = comfy_server.run_traced(workflow, run_timeout_s)
    assert trace.status == "error" and trace.error is not None
    for error in (trace.error, history_error(trace.history)):  # the websocket event and /history agree
        assert error["exception_type"] == "ZImageGGUF.IncompatibleModelError", error
        assert error["node_type"] == "KSampler"
        first, *details = error["exception_message"].splitlines()
        assert first == (f"Z-Image takes Qwen3-4B, 2560 wide, but {qwen3_narrow_gguf_name} is 2048 wide: "
                         "load a Qwen3-4B text encoder.") or first == (
            "Z-Image takes Qwen3-4B, 2560 wide, but the text encoder is 2048 wide: load a Qwen3-4B text encoder.")
        assert len(first) <= 120
        text = "\n".join(details)
        assert f"Text encoder: {qwen3_narrow_gguf_name} (Qwen3-1.7B, 2048 wide)" in text
        assert f"Diffusion model: {zimage_gguf_name} (Z-Image, caption width 2560" in text
        assert "Qwen3-4B-Instruct-2507" in text and "models/text_encoders" in text
        assert "Gemma" not in error["exception_message"] and "mat1 and mat2" not in error["exception_message"]


def test_wrong_type_for_the_encoder_stops_at_load_with_a_short_line(comfy_server, zimage_gguf_name,
                                                                    qwen3_narrow_gguf_name, flux_vae_name):
    entry = comfy_server.run_prompt(small_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name))
    error = history_error(entry)
    assert (error["node_type"], error["exception_type"]) == (ENCODER, "ZImageGGUF.IncompatibleModelError")
    first = error["exception_message"].splitlines()[0]
    assert first.startswith("Type 'lumina2' is for Z-Image, which takes Qwen3-4B;") and len(first) <= 120


@pytest.fixture(scope="module")
def second_narrow_encoder(model_cache, qwen3_narrow_gguf_name):
    """Another file name for an encoder of the same (2048) width."""
    link = model_cache / "text_encoders" / f"other-{qwen3_narrow_gguf_name}"
    if not link.is_symlink():
        link.symlink_to(model_cache / "text_encoders" / qwen3_narrow_gguf_name)
    yield link.name
    link.unlink(missing_ok=True)


@pytest.mark.parametrize("used_first", [True, False], ids=["first-file-used", "second-file-used"])
def test_two_encoders_of_one_width_the_message_names_the_one_used(
        comfy_server, zimage_gguf_name, qwen3_narrow_gguf_name, second_narrow_encoder, flux_vae_name, used_first):
    """Both encoders load in one prompt; the positive prompt (checked first) comes from `used`. Run in
    both orders on one server (loaded encoders stay cached between prompts), so a 'last encoder
    loaded' guess would name the wrong file in one of the two."""
    used, other = ((qwen3_narrow_gguf_name, second_narrow_encoder) if used_first
                   else (second_narrow_encoder, qwen3_narrow_gguf_name))
    workflow = small_workflow(zimage_gguf_name, used, flux_vae_name, clip_type="ovis")
    workflow["90"] = {"class_type": ENCODER, "inputs": {"clip_name": other, "type": "ovis", "device": "default"}}
    workflow["91"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "other encoder", "clip": ["90", 0]}}
    zero_out = node_of_type(workflow, "ConditioningZeroOut")
    zero_out["inputs"]["conditioning"] = ["91", 0]
    error = history_error(comfy_server.run_prompt(workflow))
    details = error["exception_message"].splitlines()[1]
    assert details.startswith(f"Text encoder: {used} (Qwen3-1.7B, 2048 wide)"), error["exception_message"]


@pytest.fixture(scope="module")
def crossed_files(model_cache, zimage_gguf_name, qwen3_4b_gguf_name):
    """A text encoder GGUF in diffusion_models and a diffusion GGUF in text_encoders, as users misplace them."""
    links = [
        (model_cache / "diffusion_models" / f"misplaced-{qwen3_4b_gguf_name}", model_cache / "text_encoders" / qwen3_4b_gguf_name),
        (model_cache / "text_encoders" / f"misplaced-{zimage_gguf_name}", model_cache / "diffusion_models" / zimage_gguf_name),
    ]
    for link, target in links:
        if not link.is_symlink():
            link.symlink_to(target)
    yield [link.name for link, _ in links]
    for link, _ in links:
        link.unlink(missing_ok=True)


def test_each_loader_lists_only_its_own_kind(comfy_server, crossed_files, zimage_gguf_name, qwen3_4b_gguf_name,
                                             flux_vae_name):
    encoder_in_unet_folder, unet_in_encoder_folder = crossed_files
    unets = list_of(comfy_server, DIFFUSION, "unet_name")
    clips = list_of(comfy_server, ENCODER, "clip_name")
    assert zimage_gguf_name in unets and encoder_in_unet_folder not in unets
    assert qwen3_4b_gguf_name in clips and unet_in_encoder_folder not in clips
    # Picked anyway through the API, ComfyUI refuses the name before running anything.
    workflow = small_workflow(encoder_in_unet_folder, qwen3_4b_gguf_name, flux_vae_name)
    entry = comfy_server.run_prompt(workflow)
    assert entry.get("http_status") == 400 and "unet_name" in json.dumps(entry["rejected"]), entry


def test_object_info_time_with_fifty_more_gguf_files(comfy_server, model_cache, zimage_gguf_name, qwen3_4b_gguf_name):
    """Prints /object_info times: before, the first call after 50 GGUFs appear (headers read), and
    then (cached). 25 are Qwen3-4B-shaped encoders with the full 151,936-token vocabulary."""
    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            comfy_server.get_json("/object_info")
            times.append(time.perf_counter() - start)
        return times

    folder = model_cache / "diffusion_models" / "listing-timing"
    folder.mkdir(exist_ok=True)
    try:
        before = statistics.median(timed(3))
        for i in range(25):
            (folder / f"z{i:02}.gguf").symlink_to(model_cache / "diffusion_models" / zimage_gguf_name)
            (folder / f"q{i:02}.gguf").symlink_to(model_cache / "text_encoders" / qwen3_4b_gguf_name)
        first = timed(1)[0]
        cached = statistics.median(timed(3))
        unets = list_of(comfy_server, DIFFUSION, "unet_name")
        assert [n for n in unets if n.startswith("listing-timing/")] == [f"listing-timing/z{i:02}.gguf" for i in range(25)]
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    print(f"\n[/object_info] without the 50 files {before * 1000:.0f} ms; first call with them "
          f"{first * 1000:.0f} ms; cached {cached * 1000:.0f} ms")


def test_only_the_ui_workflow_is_a_template_and_it_has_a_thumbnail(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    # the card's title is the file name (frontends 1.42 and 1.58 take no other title for extension templates)
    assert sorted(templates[PACK_NAME]) == ["Z-Image Turbo GGUF - edit and inpaint", "Z-Image Turbo GGUF - text to image"]
    name = urllib.parse.quote("Z-Image Turbo GGUF - text to image")
    status, data = comfy_server.request(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
    assert status == 200 and data[:3] == b"\xff\xd8\xff"
    status, data = comfy_server.request(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
    assert status == 200 and "nodes" in data  # served as application/json, decoded by request()
