"""File reading, architecture detection, key maps, compatibility checks and the ComfyUI node classes."""
