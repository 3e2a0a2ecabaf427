"""The ComfyUI face of the pack: node classes and their orchestration (model_families/ says what a file is)."""
