"""The oldest ComfyUI the loaders run on, checked when the pack loads under ComfyUI.

The loaders pass `disable_dynamic=` to `comfy.sd.load_diffusion_model_state_dict` (ComfyUI 0.15.1+)
and `comfy.sd.load_text_encoder_state_dicts` (0.16.0+); an older ComfyUI would fail on the first
load with a TypeError from deep inside ComfyUI, so the pack refuses it at startup instead.
"""
from __future__ import annotations

import re
import sys

from ..errors import ZImageGGUFError

MIN_COMFYUI_VERSION = (0, 16, 0)


def check_comfyui_version(version: str | None = None) -> None:
    """Raise ZImageGGUFError for a ComfyUI older than MIN_COMFYUI_VERSION. Without `version`, the
    running ComfyUI's (its `comfyui_version` module); nothing to check outside ComfyUI."""
    if version is None:
        module = sys.modules.get("comfyui_version")
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            return
    numbers = tuple(int(part) for part in re.findall(r"\d+", str(version))[:3])
    if not numbers or numbers >= MIN_COMFYUI_VERSION:
        return
    needed = ".".join(map(str, MIN_COMFYUI_VERSION))
    raise ZImageGGUFError(
        f"ComfyUI {version} is too old for the Z-Image GGUF pack: update ComfyUI to {needed} or later.\n"
        f"The GGUF loaders use ComfyUI's load options from {needed} on; an older ComfyUI would fail on the first load."
    )
