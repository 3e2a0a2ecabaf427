"""Test helpers: GGUF/safetensors factories and kernel reference checks."""
