"""Triton kernel for Q1_0 (ops/ggml/kernels/sign_bits.py): an fp16 scale d, then 128 sign bits, least
significant first (element j: bit j % 8 of byte j // 8); the value is d where the bit is set, -d
where it is clear, written as q * d with q = +-1 as the torch kernel does (exact in float32)."""
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T

from . import TritonKernel
from .common import fp16_at, load_bytes, program_blocks, store_values

# 32 blocks x 128 values over 128 threads: 32 values per thread.
BLOCKS_PER_PROGRAM = 32


@triton.jit(do_not_specialize=["n_blocks"])
def q1_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 18, 0)
    qs = load_bytes(src, b, exists, 18, 2, 16)
    bit = (qs[:, :, None] >> tl.arange(0, 8).to(tl.uint8)[None, None, :]) & 1
    q = 2 * bit.to(tl.int32) - 1
    store_values(dst, b, exists, q.to(tl.float32) * d[:, None, None], 128)


KERNELS = [TritonKernel(T.Q1_0, q1_0, BLOCKS_PER_PROGRAM, scale_fields=(0,))]
