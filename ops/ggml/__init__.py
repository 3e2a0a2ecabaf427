"""The GGML math: one record per quant type (sizes, torch kernel, Triton kernel, quantizer), the
kernels, the quantizers and the per-tensor type rules. Knows bytes and torch, not files or ComfyUI.
"""
