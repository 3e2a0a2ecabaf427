"""What the pack checks of the running ComfyUI when it loads: its version, then its internals.

The version floor: 0.16.0 is the first ComfyUI whose two loaders (`comfy.sd.load_diffusion_model_state_dict`
from 0.15.1, `comfy.sd.load_text_encoder_state_dicts` from 0.16.0) take `disable_dynamic=`, which the
pack's own layers need wherever DynamicVRAM is on; an older ComfyUI is refused at startup in one line
instead of failing on the first load. The internals (ops/comfy_edge/comfy_compat.py) are probed by presence and
signature, whatever the version says: a ComfyUI newer than the pack knows is not refused, only
reported where it lacks something.
"""
from __future__ import annotations

import re
import sys

from ..errors import ZImageGGUFError
from ..ops.comfy_edge.comfy_compat import log_at_load

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


def check_comfyui() -> None:
    """When the pack loads: refuse a ComfyUI too old (ZImageGGUFError), then log, one line per
    affected path, what the running ComfyUI lacks of the internals the pack uses. Outside ComfyUI
    nothing happens."""
    check_comfyui_version()
    log_at_load()
