"""Triton kernels for the ternary types (TQ1_0, TQ2_0) and the FP4 types (MXFP4, NVFP4).

Layouts and element order as gguf-py's dequantize_blocks (and ops/ggml/kernels/fp4_ternary.py).
Every value is scale * q in float32, q a small integer: the ternary digit - 1, or the FP4 (E2M1)
value doubled, with the scale halved as ggml does. Both factors and their product are exact in
float32 (MXFP4 included: 2^(e - 128) times at most 12, subnormal for e < 2, infinite only where
gguf-py's is), so the one rounding to the output type gives the torch kernel's values.
The FP4 codes and the scale formats are decoded arithmetically: no tables.
"""
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T

from . import TritonKernel
from .common import fp16_at, load_bytes, nibbles, program_blocks, store_values

BLOCKS_PER_PROGRAM = 16  # TQ1_0/TQ2_0: 16 blocks of 256 values over 128 threads, as the K-quants


@triton.jit(do_not_specialize=["n_blocks"])
def tq2_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # qs[64]: bit pair k of byte 32h + l is element 128h + 32k + l, as q + 1; then d
    b, exists = program_blocks(n_blocks, BLOCKS)
    qs = tl.reshape(load_bytes(src, b, exists, 66, 0, 64), (BLOCKS, 2, 32))
    d = fp16_at(src, b, exists, 66, 64)
    crumbs = (qs[:, :, None, :] >> (2 * tl.arange(0, 4)).to(tl.uint8)[None, None, :, None]) & 3
    q = crumbs.to(tl.int32) - 1
    store_values(dst, b, exists, d[:, None, None, None] * q.to(tl.float32), 256)


@triton.jit(do_not_specialize=["n_blocks"])
def tq1_0(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # qs[48], qh[4], d. Digit k of a byte is ((byte * 3^k mod 256) * 3) >> 8 (uint8 products, as
    # gguf-py's: the mod 256 is explicit here). Bytes 0-31 hold elements 32k + l (k < 5), bytes
    # 32-47 elements 160 + 16k + l (k < 5), qh bytes elements 240 + 4k + l (k < 4).
    b, exists = program_blocks(n_blocks, BLOCKS)
    head = load_bytes(src, b, exists, 54, 0, 32)
    middle = load_bytes(src, b, exists, 54, 32, 16)
    tail = load_bytes(src, b, exists, 54, 48, 4)
    d = fp16_at(src, b, exists, 54, 52)
    # the values as [BLOCKS, 8, 32], element 32r + c: rows 0-4 are digit r of head byte c; rows
    # 5-7 digit 2(r - 5) + c // 16 of middle byte c % 16, but for columns 16-31 of row 7, digit
    # (c - 16) // 4 of tail byte c % 4. Each byte is loaded once and repeated in registers.
    r = tl.arange(0, 8)[:, None]
    c = tl.arange(0, 32)[None, :]
    middle_by_column = tl.reshape(tl.permute(tl.join(middle, middle), (0, 2, 1)), (BLOCKS, 32))
    tail_twice = tl.reshape(tl.permute(tl.join(tail, tail), (0, 2, 1)), (BLOCKS, 8))
    tail_4x = tl.reshape(tl.permute(tl.join(tail_twice, tail_twice), (0, 2, 1)), (BLOCKS, 16))
    tail_by_column = tl.reshape(tl.permute(tl.join(tail_4x, tail_4x), (0, 2, 1)), (BLOCKS, 32))
    in_head = r < 5
    in_tail = (r == 7) & (c >= 16)
    byte = tl.where(in_head[None, :, :], head[:, None, :],
                    tl.where(in_tail[None, :, :], tail_by_column[:, None, :], middle_by_column[:, None, :]))
    digit = tl.where(in_head, r, tl.where(in_tail, (c - 16) // 4, 2 * (r - 5) + c // 16))
    power = tl.where((digit & 1) != 0, 3, 1) * tl.where((digit & 2) != 0, 9, 1) * tl.where((digit & 4) != 0, 81, 1)
    shifted = (byte.to(tl.int32) * power[None, :, :]) & 0xFF
    q = ((shifted * 3) >> 8) - 1
    store_values(dst, b, exists, d[:, None, None] * q.to(tl.float32), 256)


@triton.jit
def e2m1_doubled(code):
    """FP4 (E2M1) codes 0-15 (uint8) -> twice their value, float32: sign bit 3, exponent bits
    2-1, mantissa bit 0; exponent e > 0: (2 + m) << (e - 1), e = 0: m (gguf-py's kvalues)."""
    code = code.to(tl.int32)
    exponent = (code >> 1) & 3
    mantissa = code & 1
    magnitude = tl.where(exponent == 0, mantissa, (2 + mantissa) << tl.maximum(exponent - 1, 0))
    return tl.where((code & 8) != 0, -magnitude, magnitude).to(tl.float32)


@triton.jit
def e8m0_half(e):
    """E8M0 exponent bytes -> 2^(e - 128) as float32 bits (ggml_e8m0_to_fp32_half): subnormal
    0x00200000 << e for e < 2, else the exponent field e - 1."""
    e = e.to(tl.uint32)
    bits = tl.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def ue4m3_half(code):
    """UE4M3 scale bytes (bias 7; bit 7 ignored) -> half their value, float32, as gguf-py's
    ue4m3_to_fp32: exponent 0 gives mantissa * 2^-10, else (8 + mantissa) * 2^(exponent - 11);
    0x7F (E4M3's NaN) gives 0."""
    code = code.to(tl.int32)
    exponent = (code >> 3) & 15
    mantissa = code & 7
    power = ((exponent + (127 - 11)) << 23).to(tl.float32, bitcast=True)  # 2^(exponent - 11), normal
    half = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.0009765625, (8 + mantissa).to(tl.float32) * power)
    return tl.where(code == 0x7F, 0.0, half)


@triton.jit(do_not_specialize=["n_blocks"])
def mxfp4(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # e, qs[16]: element l is the low nibble of qs[l], 16 + l the high nibble
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = e8m0_half(tl.reshape(load_bytes(src, b, exists, 17, 0, 1), (BLOCKS,)))
    q = e2m1_doubled(nibbles(load_bytes(src, b, exists, 17, 1, 16)))
    store_values(dst, b, exists, d[:, None] * q, 32)


@triton.jit(do_not_specialize=["n_blocks"])
def nvfp4(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # 4 UE4M3 scales, then per sub-block s of 16 values 8 bytes: element 16s + l the low nibble
    # of byte 8s + l, 16s + 8 + l its high nibble
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = ue4m3_half(load_bytes(src, b, exists, 36, 0, 4))
    qs = tl.reshape(load_bytes(src, b, exists, 36, 4, 32), (BLOCKS * 4, 8))
    q = tl.reshape(e2m1_doubled(nibbles(qs)), (BLOCKS, 4, 16))
    store_values(dst, b, exists, d[:, :, None] * q, 64)


KERNELS = [
    TritonKernel(T.TQ1_0, tq1_0, BLOCKS_PER_PROGRAM, scale_fields=(52,)),
    TritonKernel(T.TQ2_0, tq2_0, BLOCKS_PER_PROGRAM, scale_fields=(64,)),
    # 128 blocks x 32 values, 64 x 64: 32 values per thread (the scales are no fp16 fields)
    TritonKernel(T.MXFP4, mxfp4, 128),
    TritonKernel(T.NVFP4, nvfp4, 64),
]
