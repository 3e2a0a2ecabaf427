"""Conversion to GGUF, below both faces that use it (the `convert` command and the Save Model as GGUF
node): sources (what a file holds, loaded one tensor at a time), renames (diffusers and Qwen3 HF
names), plan (which GGML type per tensor, then the writer in ops/gguf_file/writer.py)."""
