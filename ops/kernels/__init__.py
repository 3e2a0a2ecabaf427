"""Torch dequantization kernels, one small function per GGML type, gathered into one table.

Each kernel module exports KERNELS (GGML type -> kernel) and RANDOM_BLOCKS (GGML type ->
fn(n_blocks, numpy Generator) -> uint8 array (n_blocks, type_size) of valid blocks with finite
scales), used by the tests and the benchmark where gguf-py cannot quantize the type.
"""
from . import fp4_ternary, iquants, kquants, legacy

_MODULES = (legacy, kquants, iquants, fp4_ternary)

KERNELS = {t: k for m in _MODULES for t, k in m.KERNELS.items()}
RANDOM_BLOCKS = {t: f for m in _MODULES for t, f in m.RANDOM_BLOCKS.items()}
