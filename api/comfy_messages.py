"""ComfyUI's answers read in one place, for the API's backends and the standard-library `queue`
command: a rejected prompt's errors and a failed run's exception in one line, a history entry's
outcome, the images a run saved. Standard library only (the light install has no torch)."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageRef:
    filename: str
    subfolder: str
    type: str


def describe_validation_failure(body: dict) -> str:
    """One line from ComfyUI's answer to a rejected POST /prompt: its error and every node error."""
    error = body.get("error")
    parts = []
    if isinstance(error, dict):
        parts.append(error.get("message", "") + (f": {error['details']}" if error.get("details") else ""))
    elif error:
        parts.append(str(error))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            detail = f" ({item['details']})" if item.get("details") else ""
            parts.append(f"node {node_id} ({node_error.get('class_type', '?')}): {item.get('message', '')}{detail}")
    return "; ".join(part for part in parts if part) or json.dumps(body)


def describe_execution_failure(entry: dict) -> str:
    """One line from a failed prompt's history entry: the node, the exception type and its message."""
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_error":
            # ComfyUI gives the full dotted name; a custom node's module part is a file-system path.
            exception_type = str(data.get("exception_type") or "error").rsplit(".", 1)[-1]
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{exception_type}: {str(data.get('exception_message', '')).strip()}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "the server reported an error without details (see its log)"


def history_outcome(entry: dict | None) -> tuple[dict | None, str | None]:
    """A prompt's /history entry read: (outputs, None) once it finished, (None, the failure in one
    line) when it failed, (None, None) while it has not finished."""
    if entry is None:
        return None, None
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        return None, f"ComfyUI failed to run the workflow: {describe_execution_failure(entry)}"
    if status and not status.get("completed", True):
        return None, None
    return entry.get("outputs") or {}, None


def output_images(outputs: dict) -> list[ImageRef]:
    """The saved images of a run (SaveImage's type "output"); previews only when nothing was saved."""
    images = [
        ImageRef(str(image["filename"]), str(image.get("subfolder", "")), str(image.get("type", "output")))
        for node_output in outputs.values()
        for image in (node_output or {}).get("images", [])
        if isinstance(image, dict) and "filename" in image
    ]
    saved = [image for image in images if image.type == "output"]
    return saved or images


# Loader inputs that name a model file, and the folder ComfyUI reads it from.
MODEL_FILE_FOLDERS = {
    "unet_name": "models/diffusion_models",
    "clip_name": "models/text_encoders",
    "clip_name1": "models/text_encoders",
    "clip_name2": "models/text_encoders",
    "clip_name3": "models/text_encoders",
    "clip_name4": "models/text_encoders",
    "vae_name": "models/vae",
    "lora_name": "models/loras",
    "ckpt_name": "models/checkpoints",
    "control_net_name": "models/controlnet",
    "model_name": "models/upscale_models",
}
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def describe_missing_model_files(body: dict) -> list[str]:
    """For a rejected prompt: one line per model file the server does not have, with its folder."""
    lines = []
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            info = item.get("extra_info") or {}
            input_name, value = info.get("input_name"), info.get("received_value")
            if item.get("type") != "value_not_in_list" or not isinstance(value, str):
                continue
            folder = MODEL_FILE_FOLDERS.get(input_name)
            if folder is None and not value.lower().endswith(MODEL_FILE_SUFFIXES):
                continue
            where = f"{folder}/" if folder else f"the folder node {node_error.get('class_type', '?')} reads"
            lines.append(
                f"model file {value!r} is not on the server (node {node_id} "
                f"{node_error.get('class_type', '?')}, input {input_name}); put it in {where}"
            )
    return lines
