"""Triton kernels for the 32-element legacy quants: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Block layouts as in ops/ggml/kernels/legacy.py: fp16 d (and fp16 m for the _1 types), for the 5-bit
types the 32 fifth bits as a little-endian uint32 (bit j: element j), then 16 bytes of nibbles
(byte i: element i low, i + 16 high) or, for Q8_0, 32 int8. w = d * (q - offset) [+ m].
"""
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T

from . import TritonKernel
from .common import fp16_at, load_bytes, nibbles, program_blocks, store_values

# 128 blocks x 32 values over 128 threads: 32 values per thread; every per-block field has at
# least as many bytes per program as there are threads (no thread loads what another loads).
BLOCKS_PER_PROGRAM = 128


@triton.jit
def _fifth_bits(src, b, exists, TYPE_SIZE: tl.constexpr, OFFSET: tl.constexpr):
    """[BLOCKS, 32] uint8: bit j of the little-endian uint32 at OFFSET, for element j."""
    qh = load_bytes(src, b, exists, TYPE_SIZE, OFFSET, 4)  # byte k holds elements 8k .. 8k + 7
    bit = tl.arange(0, 8).to(tl.uint8)
    return tl.reshape((qh[:, :, None] >> bit[None, None, :]) & 1, (qh.shape[0], 32))


@triton.jit(do_not_specialize=["n_blocks"])
def q8_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 34, 0)
    q = load_bytes(src, b, exists, 34, 2, 32).to(tl.int8, bitcast=True)
    store_values(dst, b, exists, d[:, None] * q.to(tl.float32), 32)


@triton.jit(do_not_specialize=["n_blocks"])
def q4_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 18, 0)
    q = nibbles(load_bytes(src, b, exists, 18, 2, 16)).to(tl.int8, bitcast=True) - 8
    store_values(dst, b, exists, d[:, None] * q.to(tl.float32), 32)


@triton.jit(do_not_specialize=["n_blocks"])
def q4_1(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 20, 0)
    m = fp16_at(src, b, exists, 20, 2)
    q = nibbles(load_bytes(src, b, exists, 20, 4, 16))
    store_values(dst, b, exists, d[:, None] * q.to(tl.float32) + m[:, None], 32)


@triton.jit(do_not_specialize=["n_blocks"])
def q5_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 22, 0)
    high = _fifth_bits(src, b, exists, 22, 2)
    q = (nibbles(load_bytes(src, b, exists, 22, 6, 16)) | (high << 4)).to(tl.int8, bitcast=True) - 16
    store_values(dst, b, exists, d[:, None] * q.to(tl.float32), 32)


@triton.jit(do_not_specialize=["n_blocks"])
def q5_1(src, dst, n_blocks, BLOCKS: tl.constexpr):
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 24, 0)
    m = fp16_at(src, b, exists, 24, 2)
    high = _fifth_bits(src, b, exists, 24, 4)
    q = nibbles(load_bytes(src, b, exists, 24, 8, 16)) | (high << 4)
    store_values(dst, b, exists, d[:, None] * q.to(tl.float32) + m[:, None], 32)


KERNELS = [
    TritonKernel(T.Q8_0, q8_0, BLOCKS_PER_PROGRAM, scale_fields=(0,)),
    TritonKernel(T.Q4_0, q4_0, BLOCKS_PER_PROGRAM, scale_fields=(0,)),
    TritonKernel(T.Q4_1, q4_1, BLOCKS_PER_PROGRAM, scale_fields=(0, 2)),
    TritonKernel(T.Q5_0, q5_0, BLOCKS_PER_PROGRAM, scale_fields=(0,)),
    TritonKernel(T.Q5_1, q5_1, BLOCKS_PER_PROGRAM, scale_fields=(0, 2)),
]
