"""ComfyUI's answers turned into one line: a rejected prompt's errors, a failed run's exception."""
from __future__ import annotations

import json


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
