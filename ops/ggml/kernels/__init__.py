"""Torch dequantization kernels, one small function per GGML type, and the one chunk driver they share.

Each kernel module registers its types once, in TYPES: GGML type -> (kernel, random blocks), where
the kernel writes the values of (n_blocks, type_size) uint8 blocks into an (n_blocks, block_size)
output, and random blocks is fn(n_blocks, numpy Generator) -> uint8 array (n_blocks, type_size)
of valid blocks with finite scales, for the tests and the benchmark where gguf-py cannot quantize
the type. `ops.ggml.quant_types` turns each registration into the type's QuantType record.
"""
from . import fp4_ternary, iquants, kquants, legacy, sign_bits

MODULES = (legacy, kquants, iquants, fp4_ternary, sign_bits)
