"""Save Model as GGUF: a MODEL (LoRA patches merged) written as a city96-style quantized GGUF into
models/diffusion_models, with the same per-tensor rules and streaming writer as `convert`.

It never replaces a file: any workflow sent to /prompt can run this node, so an existing name
(maybe a model that is loaded right now) gets a counter instead, `name_00001.gguf`, as ComfyUI's
save nodes do, and the file is only ever written inside the models folder (fileio.AtomicWrite).

ComfyUI is imported lazily (the pack imports without it); the merging takes ComfyUI's
calculate_weight as a parameter so that it is testable with a stand-in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import ZImageGGUFError

DIFFUSION_PREFIX = "diffusion_model."


class SaveGGUFError(ZImageGGUFError):
    """The model cannot be saved as GGUF (unknown layout, existing file, bad name)."""


def _base_weight(patcher, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: ComfyUI keeps the original in `backup` while patches are applied in place."""
    backup = getattr(patcher, "backup", {}).get(key)
    original = backup.weight if backup is not None else tensor
    if hasattr(original, "ggml_type"):  # our QuantizedTensor: dequantize, patch, requantize
        return original.dequantize(torch.float32, device="cpu")
    return original.detach().to(device="cpu", dtype=torch.float32)


def merged_tensors(patcher, calculate_weight: Callable) -> list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]:
    """(ComfyUI name, shape, planning dtype, load) for every diffusion-model tensor; load() returns
    the float32 weight with the patcher's patches (LoRAs) merged, one tensor at a time."""
    state = patcher.model.diffusion_model.state_dict()
    tensors = []
    for name, tensor in state.items():
        key = DIFFUSION_PREFIX + name
        dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16
        if hasattr(tensor, "ggml_type"):
            dtype = torch.bfloat16

        def load(key=key, tensor=tensor):
            weight = _base_weight(patcher, key, tensor)
            patches = patcher.patches.get(key)
            if patches:
                weight = calculate_weight(patches, weight, key)
            return weight.to(torch.float32)

        tensors.append((name, tuple(tensor.shape), dtype, load))
    return tensors


def save_model_gguf(patcher, path, mix: str, calculate_weight: Callable, progress=None) -> Path:
    """Write the merged model to `path`, or to the first free `name_NNNNN.gguf` when it exists
    (`progress(n_tensors, n_elements)` makes the writer's reporter);
    returns the path written."""
    from ..conversion.plan import write_model
    from ..conversion.renames import ARCHITECTURES
    from ..errors import ModelDetectionError
    from ..model_families.diffusion import detect_diffusion_model

    tensors = merged_tensors(patcher, calculate_weight)
    try:
        info = detect_diffusion_model({}, {name: shape for name, shape, _, _ in tensors}, "this model")
    except ModelDetectionError as e:
        raise SaveGGUFError(f"Save Model as GGUF writes Z-Image models; this model's layout is unknown\n{e}") from None
    architecture = ARCHITECTURES.get(info.family)
    if architecture is None:
        raise SaveGGUFError(f"Save Model as GGUF writes Z-Image / Lumina 2 models, not {info.display_name}")
    try:
        return write_model(path, architecture, mix, tensors, progress, add_counter=True)
    except ZImageGGUFError as e:
        raise SaveGGUFError(str(e)) from None


class _ComfyProgress:
    def __init__(self, total_tensors: int, total_elements: int):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total_tensors)

    def update(self, index: int, name: str, n_elements: int) -> None:
        self.bar.update_absolute(index)


def output_path(folder: str, filename: str) -> Path:
    name = filename.strip()
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise SaveGGUFError(f"file name {filename!r} must be a plain name (no folders), e.g. z_image_lora-Q4_K_M")
    if not name.endswith(".gguf"):
        name += ".gguf"
    return Path(folder) / name


class ZImageSaveModelGGUF:
    @classmethod
    def INPUT_TYPES(cls):
        from ..ops.ggml.quant_rules import MIXES

        return {"required": {
            "model": ("MODEL",),
            "filename": ("STRING", {"default": "z_image-Q4_K_M"}),
            "type": (list(MIXES), {"default": "Q4_K_M"}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "loaders/Z-Image GGUF"
    DESCRIPTION = ("Writes the model, with its LoRAs merged, as a quantized GGUF into models/diffusion_models "
                   "(city96 layout: loads in this pack and in ComfyUI-GGUF). An existing name is never "
                   "replaced: the new file gets a counter, name_00001.gguf.")

    def save(self, model, filename, type="Q4_K_M"):
        import comfy.lora
        import folder_paths

        path = output_path(folder_paths.get_folder_paths("diffusion_models")[0], filename)
        written = save_model_gguf(model, path, type, comfy.lora.calculate_weight, _ComfyProgress)
        return {"ui": {"text": [str(written)]}}


NODE_CLASS_MAPPINGS = {"ZImageSaveModelGGUF": ZImageSaveModelGGUF}
NODE_DISPLAY_NAME_MAPPINGS = {"ZImageSaveModelGGUF": "Save Model as GGUF (Z-Image pack)"}
