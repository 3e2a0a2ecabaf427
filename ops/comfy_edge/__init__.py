"""The ComfyUI edge: GGML layouts for ComfyUI's quantized tensors, the ops namespaces and patchers,
and the compatibility probe. ComfyUI is imported only inside functions (ggml_layouts: only by
comfy_layout.register()).
"""
