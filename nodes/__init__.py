"""The ComfyUI face of the pack: node classes and their orchestration (families/ says what a file is)."""
