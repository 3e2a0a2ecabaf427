"""Z-Image GGUF: ComfyUI custom-node pack entry point.

Importing this package needs no ComfyUI; the node classes touch ComfyUI only when ComfyUI calls them.
"""
from .ops.reader import load_gguf
from .nodes.loaders import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["load_gguf", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
