"""Triton kernels for the 256-element codebook I-quants: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
IQ3_XXS, IQ3_S (IQ4_NL/IQ4_XS are iq4.py).

Layouts and element order as gguf-py's dequantize_blocks (and ops/ggml/kernels/iquants.py). Each row
of 8 (IQ3: 4) weights takes its values from a codebook row, the grid, which is a constant table
(int8, one row per index, from gguf-py's grids) loaded per row; the signs of IQ2_XXS/IQ2_XS/
IQ3_XXS come from 7-bit indices into ggml's ksigns, whose eighth bit is the parity of the seven,
computed here in registers. The sub-block scale and the signs are applied as gguf-py writes
them: (d * (0.5 + s) * 0.25) * grid * sign; IQ1: (d * (2s + 1)) * (grid +- 1/8).

Exactness: every product here is exact in float32 (an fp16 d, at most 11 significant bits, times
small integers and powers of two: at most 22 bits, no underflow or overflow), so the float32
values are gguf-py's bit for bit in any order, and the one rounding to the output type matches
the torch kernel's.
"""
import numpy as np
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from . import TritonKernel
from .common import fp16_at, le16, load_bytes, program_blocks, store_values

# 16 blocks x 256 values over 128 threads: 32 values per thread, as the K-quants.
BLOCKS_PER_PROGRAM = 16


def _grid(quant_class) -> np.ndarray:
    """gguf-py's decoded grid of an I-quant as an int8 (rows, values) table (values fit: -1..62)."""
    quant_class.init_grid()
    return quant_class.grid.reshape(quant_class.grid_shape).astype(np.int8)


# Table builders are module-level functions: launch() caches each table per (builder, device).
def iq2_xxs_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ2_XXS)


def iq2_xs_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ2_XS)


def iq2_s_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ2_S)


def iq3_xxs_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ3_XXS)


def iq3_s_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ3_S)


def iq1_grid() -> np.ndarray:
    return _grid(gguf_quants.IQ1_S)


@triton.jit
def le32(quads):
    """[R, 4] uint8 -> [R] uint32, the little-endian word of each row."""
    even, odd = tl.split(tl.reshape(quads, (quads.shape[0], 2, 2)).to(tl.uint32))  # bytes 0, 2 | 1, 3
    low, high = tl.split(even | (odd << 8))
    return low | (high << 16)


@triton.jit
def grid_rows(grid, index, WIDTH: tl.constexpr):
    """[..., WIDTH] float32: rows `index` (int32, any shape) of an int8 codebook table."""
    rows = tl.load(grid + tl.expand_dims(index * WIDTH, -1) + tl.arange(0, WIDTH))
    return rows.to(tl.float32)


@triton.jit
def sign_factors(bits):
    """[...] uint8/int32 sign bytes -> [..., 8] float32: -1 where bit j is set, else 1."""
    bit = (tl.expand_dims(bits.to(tl.int32), -1) >> tl.arange(0, 8)) & 1
    return tl.where(bit != 0, -1.0, 1.0)


@triton.jit
def ksigns(index):
    """7-bit sign indices (int32) -> ggml's ksigns byte: the index with its parity as bit 7."""
    parity = index ^ (index >> 4)
    parity = parity ^ (parity >> 2)
    parity = parity ^ (parity >> 1)
    return index | ((parity & 1) << 7)


@triton.jit
def scale_nibbles(packed):
    """[B, N] uint8 -> [B, 2N] int32 sub-block scales: low nibble of byte i is scale 2i, high 2i + 1."""
    both = tl.join(packed & 15, packed >> 4)
    return tl.reshape(both, (packed.shape[0], 2 * packed.shape[1])).to(tl.int32)


@triton.jit(do_not_specialize=["n_blocks"])
def iq2_xxs(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, then per 32 weights two uint32: four grid bytes (one per row of 8) and aux (four 7-bit
    # sign indices, one per row, and the 4-bit scale at bits 28-31)
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 66, 0)
    pairs = tl.reshape(le32(tl.reshape(load_bytes(src, b, exists, 66, 2, 64), (BLOCKS * 16, 4))), (BLOCKS, 8, 2))
    grid_word, aux = tl.split(pairs)
    four = tl.arange(0, 4)
    index = ((grid_word[:, :, None] >> (8 * four)) & 255).to(tl.int32)
    signs = ksigns(((aux[:, :, None] >> (7 * four)) & 127).to(tl.int32))
    db = d[:, None] * (0.5 + (aux >> 28).to(tl.float32)) * 0.25
    values = db[:, :, None, None] * grid_rows(grid, index, 8) * sign_factors(signs)
    store_values(dst, b, exists, values, 256)


@triton.jit(do_not_specialize=["n_blocks"])
def iq2_xs(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, qs[32] uint16 (9-bit grid index | 7-bit sign index << 9, one per row of 8), scales[8]
    # (one 4-bit scale per 16 weights)
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 74, 0)
    qs = tl.reshape(le16(tl.reshape(load_bytes(src, b, exists, 74, 2, 64), (BLOCKS * 32, 2))), (BLOCKS, 16, 2))
    scales = scale_nibbles(load_bytes(src, b, exists, 74, 66, 8))
    qs = qs.to(tl.int32)
    db = d[:, None] * (0.5 + scales.to(tl.float32)) * 0.25
    values = db[:, :, None, None] * grid_rows(grid, qs & 511, 8) * sign_factors(ksigns(qs >> 9))
    store_values(dst, b, exists, values, 256)


@triton.jit(do_not_specialize=["n_blocks"])
def iq2_s(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, qs[32] (low 8 bits of each row's grid index), signs[32] (one byte per row of 8), qh[8]
    # (bit pair k of byte i: the top two index bits of row 4i + k), scales[8] (as IQ2_XS)
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 82, 0)
    qs = tl.reshape(load_bytes(src, b, exists, 82, 2, 32), (BLOCKS, 16, 2))
    signs = tl.reshape(load_bytes(src, b, exists, 82, 34, 32), (BLOCKS, 16, 2))
    qh = load_bytes(src, b, exists, 82, 66, 8)
    scales = scale_nibbles(load_bytes(src, b, exists, 82, 74, 8))
    high = tl.reshape((qh[:, :, None] >> (2 * tl.arange(0, 4)).to(tl.uint8)) & 3, (BLOCKS, 16, 2))
    index = qs.to(tl.int32) | (high.to(tl.int32) << 8)
    db = d[:, None] * (0.5 + scales.to(tl.float32)) * 0.25
    values = db[:, :, None, None] * grid_rows(grid, index, 8) * sign_factors(signs)
    store_values(dst, b, exists, values, 256)


@triton.jit(do_not_specialize=["n_blocks"])
def iq3_xxs(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, qs[64] (grid index per row of 4), then per 32 weights a uint32: four 7-bit sign indices
    # (one per 8 weights) and the 4-bit scale at bits 28-31
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 98, 0)
    qs = tl.reshape(load_bytes(src, b, exists, 98, 2, 64), (BLOCKS, 8, 8))
    aux = tl.reshape(le32(tl.reshape(load_bytes(src, b, exists, 98, 66, 32), (BLOCKS * 8, 4))), (BLOCKS, 8))
    signs = ksigns(((aux[:, :, None] >> (7 * tl.arange(0, 4))) & 127).to(tl.int32))
    db = d[:, None] * (0.5 + (aux >> 28).to(tl.float32)) * 0.5
    rows = tl.reshape(grid_rows(grid, qs.to(tl.int32), 4), (BLOCKS, 8, 4, 8))
    values = db[:, :, None, None] * rows * sign_factors(signs)
    store_values(dst, b, exists, values, 256)


@triton.jit(do_not_specialize=["n_blocks"])
def iq3_s(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, qs[64] (low 8 bits of each row of 4's grid index), qh[8] (bit k of byte i: the ninth
    # index bit of row 8i + k), signs[32] (one byte per 8 weights), scales[4] (one nibble per 32)
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 110, 0)
    qs = load_bytes(src, b, exists, 110, 2, 64)
    qh = load_bytes(src, b, exists, 110, 66, 8)
    signs = tl.reshape(load_bytes(src, b, exists, 110, 74, 32), (BLOCKS, 8, 4))
    scales = scale_nibbles(load_bytes(src, b, exists, 110, 106, 4))
    high = tl.reshape((qh[:, :, None] >> tl.arange(0, 8).to(tl.uint8)) & 1, (BLOCKS, 64))
    index = qs.to(tl.int32) | (high.to(tl.int32) << 8)
    db = d[:, None] * (1 + 2 * scales).to(tl.float32)
    rows = tl.reshape(grid_rows(grid, index, 4), (BLOCKS, 8, 4, 8))
    values = db[:, :, None, None] * rows * sign_factors(signs)
    store_values(dst, b, exists, values, 256)


@triton.jit(do_not_specialize=["n_blocks"])
def iq1_s(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # d, qs[32] (low 8 bits of each row of 8's 11-bit grid index), then per 32 weights a uint16:
    # bits 3k..3k+2 the top index bits of row k, 12-14 the scale s, 15 the sign of the delta
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 50, 0)
    qs = tl.reshape(load_bytes(src, b, exists, 50, 2, 32), (BLOCKS, 8, 4))
    qh = tl.reshape(le16(tl.reshape(load_bytes(src, b, exists, 50, 34, 16), (BLOCKS * 8, 2))), (BLOCKS, 8))
    qh = qh.to(tl.int32)
    index = qs.to(tl.int32) | (((qh[:, :, None] >> (3 * tl.arange(0, 4))) & 7) << 8)
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).to(tl.float32)
    delta = tl.where((qh & 0x8000) == 0, 0.125, -0.125)
    values = dl[:, :, None, None] * (grid_rows(grid, index, 8) + delta[:, :, None, None])
    store_values(dst, b, exists, values, 256)


@triton.jit
def _three_bit_fields(word):
    """[B] int32 -> [B, 4]: bits 3k..3k+2 of each word."""
    return (word[:, None] >> (3 * tl.arange(0, 4))[None, :]) & 7


@triton.jit(do_not_specialize=["n_blocks"])
def iq1_m(src, dst, n_blocks, grid, BLOCKS: tl.constexpr):
    # qs[32] (low 8 bits of each row of 8's grid index), qh[16] (low nibble of byte i: row 2i,
    # high: row 2i + 1; bits 0-2 the top index bits, bit 3 the sign of the delta), scales as four
    # uint16: bits 3k..3k+2 of word w the scale of rows 8w + 2k, 8w + 2k + 1; bits 12-15 of word w
    # bits 4w..4w+3 of the fp16 block scale d
    b, exists = program_blocks(n_blocks, BLOCKS)
    qs = load_bytes(src, b, exists, 56, 0, 32)
    qh = load_bytes(src, b, exists, 56, 32, 16)
    words = tl.reshape(le16(tl.reshape(load_bytes(src, b, exists, 56, 48, 8), (BLOCKS * 4, 2))), (BLOCKS, 4))
    words = words.to(tl.int32)
    even, odd = tl.split(tl.reshape(words, (BLOCKS, 2, 2)))  # words 0, 2 | 1, 3
    w0, w2 = tl.split(even)
    w1, w3 = tl.split(odd)
    d_bits = (w0 >> 12) | ((w1 >> 8) & 0xF0) | ((w2 >> 4) & 0xF00) | (w3 & 0xF000)
    d = d_bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    # the scales from the split words too: a second use of `words` in another shape made the ROCm
    # compiler load the scale bytes twice (once per layout)
    both = tl.join(tl.join(_three_bit_fields(w0), _three_bit_fields(w1)),
                   tl.join(_three_bit_fields(w2), _three_bit_fields(w3)))  # [B, k, word & 1, word >> 1]
    scales = tl.reshape(tl.permute(both, (0, 3, 2, 1)), (BLOCKS, 16))
    row_bits = tl.reshape(tl.join(qh & 15, qh >> 4), (BLOCKS, 32)).to(tl.int32)
    index = qs.to(tl.int32) | ((row_bits & 7) << 8)
    delta = tl.where((row_bits & 8) == 0, 0.125, -0.125)
    dl = d[:, None] * (2 * scales + 1).to(tl.float32)
    rows = grid_rows(grid, index, 8) + delta[:, :, None]
    values = dl[:, :, None, None] * tl.reshape(rows, (BLOCKS, 16, 2, 8))
    store_values(dst, b, exists, values, 256)


KERNELS = [
    TritonKernel(T.IQ1_S, iq1_s, BLOCKS_PER_PROGRAM, tables=(iq1_grid,), scale_fields=(0,)),
    # IQ1_M's d is spread over four nibbles: no fp16 field the shared tests could overwrite
    TritonKernel(T.IQ1_M, iq1_m, BLOCKS_PER_PROGRAM, tables=(iq1_grid,)),
    TritonKernel(T.IQ2_XXS, iq2_xxs, BLOCKS_PER_PROGRAM, tables=(iq2_xxs_grid,), scale_fields=(0,)),
    TritonKernel(T.IQ2_XS, iq2_xs, BLOCKS_PER_PROGRAM, tables=(iq2_xs_grid,), scale_fields=(0,)),
    TritonKernel(T.IQ2_S, iq2_s, BLOCKS_PER_PROGRAM, tables=(iq2_s_grid,), scale_fields=(0,)),
    TritonKernel(T.IQ3_XXS, iq3_xxs, BLOCKS_PER_PROGRAM, tables=(iq3_xxs_grid,), scale_fields=(0,)),
    TritonKernel(T.IQ3_S, iq3_s, BLOCKS_PER_PROGRAM, tables=(iq3_s_grid,), scale_fields=(0,)),
]
