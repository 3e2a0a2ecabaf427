"""Z-Image GGUF: ComfyUI custom-node pack entry point.

Importing this package needs no ComfyUI; the node classes touch ComfyUI only when ComfyUI calls them.
Under a running ComfyUI it also adds the OpenAI-style image API routes and registers the GGML
layouts with ComfyUI's quantization layer; elsewhere those steps do nothing.
"""
from importlib.util import find_spec as _find_spec

WEB_DIRECTORY = "./web"  # web/docs/<node class>.md: the help pages of the editor's node library (no scripts)

if __package__ and _find_spec("torch") is not None:
    from .nodes.comfy_version import check_comfyui

    check_comfyui()  # under ComfyUI: refuse one too old in one clear line; log what it lacks (comfy_compat)

    from .ops.gguf_file.reader import load_gguf
    from .nodes import loaders as _loaders, save_gguf as _save_gguf
    from .api.inserver import register_with_comfyui as _add_image_api_routes
    from .ops.comfy_edge.comfy_layout import register_if_loaded as _register_gguf_layouts

    NODE_CLASS_MAPPINGS = {**_loaders.NODE_CLASS_MAPPINGS, **_save_gguf.NODE_CLASS_MAPPINGS}
    NODE_DISPLAY_NAME_MAPPINGS = {**_loaders.NODE_DISPLAY_NAME_MAPPINGS, **_save_gguf.NODE_DISPLAY_NAME_MAPPINGS}
    __all__ = ["load_gguf", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

    _add_image_api_routes()
    _register_gguf_layouts()
else:
    # pytest imports a checkout's root __init__.py on its own (no parent package) when the checkout's
    # folder name is no Python identifier, e.g. custom_nodes/comfyui-zimage-gguf: nothing to load then.
    # Without torch (the light install, for `queue` and `serve`) there are no nodes and no load_gguf.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

    def __getattr__(name):
        if name == "load_gguf":
            raise ImportError("load_gguf needs torch: install the full pack, pip install \"comfyui-zimage-gguf[full]\"")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
