"""Triton kernels for the 256-element K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Layouts and element order as in ops/ggml/kernels/kquants.py. Every value is (d * sub_scale) * q
[- dmin * sub_min]: the per-sub-block products are computed in float32 first, as gguf-py does,
then each value is one multiply (and one subtract), so the float32 result is gguf-py's bit for bit.
"""
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T

from . import TritonKernel
from .common import fp16_at, load_bytes, nibbles, program_blocks, store_values

# 16 blocks x 256 values over 128 threads: 32 values per thread.
BLOCKS_PER_PROGRAM = 16


@triton.jit
def _crumbs(packed):
    """[B, G, 32] uint8 -> [B, G, 4, 32]: bit pair k of each byte in plane k."""
    shift = (2 * tl.arange(0, 4)).to(tl.uint8)
    return (packed[:, :, None, :] >> shift[None, None, :, None]) & 3


@triton.jit(do_not_specialize=["n_blocks"])
def q2_k(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # scales[16] (low nibble: scale, high: min of 16 elements), qs[64], d, dmin
    b, exists = program_blocks(n_blocks, BLOCKS)
    sc = load_bytes(src, b, exists, 84, 0, 16)
    qs = tl.reshape(load_bytes(src, b, exists, 84, 16, 64), (BLOCKS, 2, 32))
    d = fp16_at(src, b, exists, 84, 80)
    dmin = fp16_at(src, b, exists, 84, 82)
    scale = d[:, None] * (sc & 15).to(tl.float32)
    minimum = dmin[:, None] * (sc >> 4).to(tl.float32)
    q = tl.reshape(_crumbs(qs), (BLOCKS, 16, 16))  # element 128h + 32k + l: qs byte 32h + l, pair k
    store_values(dst, b, exists, q.to(tl.float32) * scale[:, :, None] - minimum[:, :, None], 256)


@triton.jit(do_not_specialize=["n_blocks"])
def q3_k(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # hmask[32], qs[64], scales[12], d
    b, exists = program_blocks(n_blocks, BLOCKS)
    hmask = load_bytes(src, b, exists, 110, 0, 32)
    qs = tl.reshape(load_bytes(src, b, exists, 110, 32, 64), (BLOCKS, 2, 32))
    low_scales = load_bytes(src, b, exists, 110, 96, 8)  # low nibbles: scales 0-7, high: 8-15
    high_scales = load_bytes(src, b, exists, 110, 104, 4)  # bit pair k of byte i: scale 4k + i
    d = fp16_at(src, b, exists, 110, 108)
    pair = (2 * tl.arange(0, 4)).to(tl.uint8)
    high = tl.reshape((high_scales[:, None, :] >> pair[None, :, None]) & 3, (BLOCKS, 16))
    six_bit = nibbles(low_scales) | (high << 4)
    scale = d[:, None] * (six_bit.to(tl.int8, bitcast=True) - 32).to(tl.float32)
    # element 128h + 32k + l: + 4 where bit 4h + k of hmask byte l is set
    bit = (4 * tl.arange(0, 2)[:, None] + tl.arange(0, 4)[None, :]).to(tl.uint8)
    high_bit = (hmask[:, None, None, :] >> bit[None, :, :, None]) & 1
    q = (_crumbs(qs) + 4 * high_bit).to(tl.int8, bitcast=True) - 4
    values = tl.reshape(q, (BLOCKS, 16, 16)).to(tl.float32) * scale[:, :, None]
    store_values(dst, b, exists, values, 256)


@triton.jit
def _scales_mins_k4(src, b, exists, TYPE_SIZE: tl.constexpr, BLOCKS: tl.constexpr):
    """d * scale and dmin * min of the 8 sub-blocks of Q4_K/Q5_K: [BLOCKS, 8] float32 each.

    d, dmin at bytes 0-3; 12 bytes of 6-bit scales/mins at 4-15: bytes 4-7 hold scales 0-3, 8-11
    mins 0-3 (low 6 bits), 12-15 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high),
    whose top 2 bits are the top 2 bits of bytes 4-7 / 8-11."""
    d = fp16_at(src, b, exists, TYPE_SIZE, 0)
    dmin = fp16_at(src, b, exists, TYPE_SIZE, 2)
    first = load_bytes(src, b, exists, TYPE_SIZE, 4, 4)
    second = load_bytes(src, b, exists, TYPE_SIZE, 8, 4)
    third = load_bytes(src, b, exists, TYPE_SIZE, 12, 4)
    scales = tl.reshape(tl.permute(tl.join(first & 63, (third & 15) | ((first >> 6) << 4)), (0, 2, 1)), (BLOCKS, 8))
    mins = tl.reshape(tl.permute(tl.join(second & 63, (third >> 4) | ((second >> 6) << 4)), (0, 2, 1)), (BLOCKS, 8))
    return d[:, None] * scales.to(tl.float32), dmin[:, None] * mins.to(tl.float32)


@triton.jit(do_not_specialize=["n_blocks"])
def q4_k(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # d, dmin, scales[12], qs[128]: qs byte 32c + l holds elements 64c + l (low) and 64c + 32 + l
    b, exists = program_blocks(n_blocks, BLOCKS)
    scale, minimum = _scales_mins_k4(src, b, exists, 144, BLOCKS)
    qs = tl.reshape(load_bytes(src, b, exists, 144, 16, 128), (BLOCKS * 4, 32))
    q = tl.reshape(nibbles(qs), (BLOCKS, 8, 32))
    store_values(dst, b, exists, q.to(tl.float32) * scale[:, :, None] - minimum[:, :, None], 256)


@triton.jit(do_not_specialize=["n_blocks"])
def q5_k(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # d, dmin, scales[12], qh[32], qs[128]; bit j of qh byte l: the fifth bit of element 32j + l
    b, exists = program_blocks(n_blocks, BLOCKS)
    scale, minimum = _scales_mins_k4(src, b, exists, 176, BLOCKS)
    qh = load_bytes(src, b, exists, 176, 16, 32)
    qs = tl.reshape(load_bytes(src, b, exists, 176, 48, 128), (BLOCKS * 4, 32))
    bit = tl.arange(0, 8).to(tl.uint8)
    fifth = (qh[:, None, :] >> bit[None, :, None]) & 1
    q = tl.reshape(nibbles(qs), (BLOCKS, 8, 32)) + (fifth << 4)
    store_values(dst, b, exists, q.to(tl.float32) * scale[:, :, None] - minimum[:, :, None], 256)


@triton.jit(do_not_specialize=["n_blocks"])
def q6_k(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # ql[128], qh[64], scales[16] int8, d. Plane p = 4h + 2 * nibble + kk (32 elements each) takes
    # nibble `nibble` of ql byte 64h + 32kk + l and bit pair (2 * nibble + kk) of qh byte 32h + l.
    b, exists = program_blocks(n_blocks, BLOCKS)
    ql = tl.reshape(load_bytes(src, b, exists, 210, 0, 128), (BLOCKS * 2, 64))
    qh = tl.reshape(load_bytes(src, b, exists, 210, 128, 64), (BLOCKS, 2, 32))
    sc = load_bytes(src, b, exists, 210, 192, 16).to(tl.int8, bitcast=True)
    d = fp16_at(src, b, exists, 210, 208)
    low = tl.reshape(nibbles(ql), (BLOCKS, 2, 4, 32))
    q = (low | (_crumbs(qh) << 4)).to(tl.int8, bitcast=True) - 32
    scale = d[:, None] * sc.to(tl.float32)
    store_values(dst, b, exists, tl.reshape(q, (BLOCKS, 16, 16)).to(tl.float32) * scale[:, :, None], 256)


KERNELS = [
    TritonKernel(T.Q2_K, q2_k, BLOCKS_PER_PROGRAM, scale_fields=(80, 82)),
    TritonKernel(T.Q3_K, q3_k, BLOCKS_PER_PROGRAM, scale_fields=(108,)),
    TritonKernel(T.Q4_K, q4_k, BLOCKS_PER_PROGRAM, scale_fields=(0, 2)),
    TritonKernel(T.Q5_K, q5_k, BLOCKS_PER_PROGRAM, scale_fields=(0, 2)),
    TritonKernel(T.Q6_K, q6_k, BLOCKS_PER_PROGRAM, scale_fields=(208,)),
]
