"""Z-Image GGUF: ComfyUI custom-node pack entry point.

Importing this package needs no ComfyUI; the node classes touch ComfyUI only when ComfyUI calls them.
"""
from .ops.reader import load_gguf
from .nodes import loaders as _loaders, save_gguf as _save_gguf

NODE_CLASS_MAPPINGS = {**_loaders.NODE_CLASS_MAPPINGS, **_save_gguf.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**_loaders.NODE_DISPLAY_NAME_MAPPINGS, **_save_gguf.NODE_DISPLAY_NAME_MAPPINGS}

__all__ = ["load_gguf", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def _add_image_api_routes() -> None:
    # Only under a running ComfyUI (its `server` module loaded); importing the package elsewhere adds nothing.
    from .api.inserver import register_with_comfyui

    register_with_comfyui()


_add_image_api_routes()


def _register_gguf_layouts() -> None:
    # Under a running ComfyUI with comfy-kitchen quantized tensors: the GGML layouts, registered
    # with ComfyUI's quantization layer as the pack loads (ops/comfy_layout.py). Elsewhere nothing.
    from .ops.comfy_layout import register_if_loaded

    register_if_loaded()


_register_gguf_layouts()
