"""The shipped API workflow on a real ComfyUI server, with its model names swapped for generated files.

Proves: ComfyUI's startup imports the pack and lists its nodes; the workflow returns an image
through POST /prompt and through the `queue` command; a text encoder of the wrong width stops with
the pack's IncompatibleModelError (both widths named), not torch's `mat1 and mat2` error.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import urllib.parse


from comfy_server import SHIPPED_API_WORKFLOW as API_WORKFLOW, shipped_workflow  # noqa: E402

TEST_SIZE = 64
TEST_STEPS = 1


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR is always the first chunk
    return width, height


def small_workflow(unet: str, clip: str, vae: str, clip_type: str = "lumina2") -> dict:
    return shipped_workflow(unet, clip, vae, clip_type, size=TEST_SIZE, steps=TEST_STEPS)


def outcome(entry: dict) -> str:
    """One readable line for assertion messages: the status, or the error ComfyUI reported."""
    if "rejected" in entry:
        return f"/prompt refused it (HTTP {entry['http_status']}): {entry['rejected']}"
    for event, data in entry["status"]["messages"]:
        if event == "execution_error":
            return f"node {data['node_id']} ({data['node_type']}): {data['exception_type']}: {data['exception_message']}"
    return entry["status"]["status_str"]


def execution_error(entry: dict) -> dict:
    assert "rejected" not in entry and entry["status"]["status_str"] == "error", outcome(entry)
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    return error


def test_startup_imports_the_pack_and_lists_its_nodes(comfy_server):
    pack_dir = comfy_server.base_dir / "custom_nodes" / "comfyui_zimage_gguf"
    log_lines = comfy_server.log_path.read_text(errors="replace").splitlines()
    # ComfyUI's startup summary: one "<seconds> seconds[ (IMPORT FAILED)]: <path>" line per custom node
    (import_line,) = [line for line in log_lines if line.strip().endswith(f": {pack_dir}")]
    assert "IMPORT FAILED" not in import_line
    assert not [line for line in log_lines if line.startswith(f"Cannot import {pack_dir}")]
    info = comfy_server.get_json("/object_info/ZImageGGUFDiffusionModelLoader")["ZImageGGUFDiffusionModelLoader"]
    assert info["display_name"] == "Load Diffusion Model (GGUF, Z-Image pack)"
    assert list(info["input"]["required"]) == ["unet_name", "dequant_dtype", "patch_on_device"]
    assert info["input"]["required"]["dequant_dtype"][0] == ["auto", "float16", "bfloat16", "float32"]
    assert info["output"] == ["MODEL"]
    info = comfy_server.get_json("/object_info/ZImageGGUFTextEncoderLoader")["ZImageGGUFTextEncoderLoader"]
    assert info["display_name"] == "Load Text Encoder (GGUF, Z-Image pack)"
    assert list(info["input"]["required"]) + list(info["input"].get("optional", {})) == ["clip_name", "type", "device"]
    assert "lumina2" in info["input"]["required"]["type"][0]
    assert info["output"] == ["CLIP"]


def test_generated_models_are_listed_by_the_loaders(comfy_server, zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name):
    unet_names = comfy_server.get_json("/object_info/ZImageGGUFDiffusionModelLoader")[
        "ZImageGGUFDiffusionModelLoader"]["input"]["required"]["unet_name"][0]
    clip_names = comfy_server.get_json("/object_info/ZImageGGUFTextEncoderLoader")[
        "ZImageGGUFTextEncoderLoader"]["input"]["required"]["clip_name"][0]
    assert zimage_gguf_name in unet_names
    assert qwen3_4b_gguf_name in clip_names
    assert flux_vae_name in comfy_server.get_json("/object_info/VAELoader")["VAELoader"]["input"]["required"]["vae_name"][0]


def test_api_workflow_returns_an_image(comfy_server, zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name):
    entry = comfy_server.run_prompt(small_workflow(zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name))
    assert "rejected" not in entry and entry["status"]["status_str"] == "success", outcome(entry)
    (images,) = [output["images"] for output in entry["outputs"].values() if output.get("images")]
    (image,) = images
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
    status, data = comfy_server.request(f"/view?{query}")
    assert status == 200
    assert png_size(data) == (TEST_SIZE, TEST_SIZE)


def test_queue_command_end_to_end(comfy_server, zimage_gguf_name, qwen3_4b_gguf_name, flux_vae_name, tmp_path, cli_env,
                                  run_timeout_s):
    # The shipped file as it is: the model files are set by --unet/--clip/--vae, as a user would.
    out = tmp_path / "fox.png"
    result = subprocess.run(
        [sys.executable, "-m", "comfyui_zimage_gguf", "queue", str(API_WORKFLOW), "--server", comfy_server.url,
         "--unet", zimage_gguf_name, "--clip", qwen3_4b_gguf_name, "--vae", flux_vae_name,
         "--prompt", "a red fox in fresh snow", "--seed", "7", "--width", "96", "--height", "64",
         "--steps", "2", "--out", str(out), "--poll-interval", "0.5", "--timeout", str(run_timeout_s)],
        capture_output=True, text=True, timeout=run_timeout_s + 60, env=cli_env, cwd=tmp_path,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert f"saved {out}" in result.stdout
    # live progress from the websocket: node names as they start and the sampler's steps
    sampler_id = next(key for key, node in json.loads(API_WORKFLOW.read_text()).items()
                      if node["class_type"] == "KSampler")
    assert f"] KSampler (#{sampler_id}): step 1/2" in result.stdout, result.stdout
    assert f"] KSampler (#{sampler_id}): step 2/2" in result.stdout, result.stdout
    assert "Load Diffusion Model" in result.stdout or "ZImageGGUFDiffusionModelLoader" in result.stdout, result.stdout
    assert png_size(out.read_bytes()) == (96, 64)


def test_queue_command_reports_a_failed_run_first_line_first(comfy_server, zimage_gguf_name, qwen3_narrow_gguf_name,
                                                        flux_vae_name, tmp_path, cli_env, run_timeout_s):
    workflow_path = tmp_path / "mismatched_api.json"
    workflow_path.write_text(json.dumps(small_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name)))
    result = subprocess.run(
        [sys.executable, "-m", "comfyui_zimage_gguf", "queue", str(workflow_path), "--server", comfy_server.url,
         "--out", str(tmp_path / "never.png"), "--poll-interval", "0.5", "--timeout", str(run_timeout_s)],
        capture_output=True, text=True, timeout=run_timeout_s + 60, env=cli_env, cwd=tmp_path,
    )
    assert result.returncode == 1, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    # one line says what failed and what to do; the error's detail lines (files, widths, download) follow
    first, *details = result.stderr.splitlines()
    assert first.startswith("error: ComfyUI failed to run the workflow:") and "IncompatibleModelError" in first
    assert "load a Qwen3-4B text encoder" in first
    assert any("models/text_encoders" in line for line in details)
    assert not (tmp_path / "never.png").exists()


def test_encoder_of_the_wrong_width_fails_with_our_error(comfy_server, zimage_gguf_name, qwen3_narrow_gguf_name,
                                                         flux_vae_name):
    # "ovis" is the type ComfyUI builds a 2048-wide Qwen3 for, so the encoder loads and encodes;
    # the mismatch can only be seen when its features meet the Z-Image model.
    workflow = small_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name, clip_type="ovis")
    error = execution_error(comfy_server.run_prompt(workflow))
    message = error["exception_message"]
    assert error["exception_type"].endswith("IncompatibleModelError"), error
    assert "2560" in message and "2048" in message, message
    assert qwen3_narrow_gguf_name in message and zimage_gguf_name in message, message
    assert "mat1 and mat2" not in message


def test_encoder_of_the_wrong_model_for_its_type_fails_at_load(comfy_server, zimage_gguf_name, qwen3_narrow_gguf_name,
                                                               flux_vae_name):
    workflow = small_workflow(zimage_gguf_name, qwen3_narrow_gguf_name, flux_vae_name, clip_type="lumina2")
    error = execution_error(comfy_server.run_prompt(workflow))
    assert error["node_type"] == "ZImageGGUFTextEncoderLoader", error
    assert error["exception_type"].endswith("IncompatibleModelError"), error
    assert qwen3_narrow_gguf_name in error["exception_message"] and "2048" in error["exception_message"]
