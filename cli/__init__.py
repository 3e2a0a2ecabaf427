"""The command line: `python -m comfyui_zimage_gguf {inspect,queue,bench} ...` (no ComfyUI needed)."""
