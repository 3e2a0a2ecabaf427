"""Triton kernels for IQ4_NL and IQ4_XS: 4-bit indices into ggml's 16-value non-linear codebook
(kvalues_iq4nl), times the fp16 block scale (IQ4_XS: and a 6-bit sub-block scale - 32).

The codebook lives in registers: its 16 int8 values packed four to an int32 constant, picked by
the index's top two bits and shifted by its low two, so the kernels load nothing but the blocks.
Every product here is exact in float32, so any order gives gguf-py's values; rounding to the
output type happens once.
"""
import numpy as np
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from . import TritonKernel
from .common import fp16_at, le16, load_bytes, nibbles, program_blocks, store_values

BLOCKS_PER_PROGRAM = 128  # IQ4_NL: 32 values per block (IQ4_XS: 16 blocks of 256)


def _packed_codebook() -> list[int]:
    """kvalues_iq4nl as four int32 words, value 4w + i in byte i of word w."""
    kvalues = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.int8)
    return [int(w) for w in kvalues.view("<i4")]


_W0, _W1, _W2, _W3 = _packed_codebook()
KV_WORD_0 = tl.constexpr(_W0)
KV_WORD_1 = tl.constexpr(_W1)
KV_WORD_2 = tl.constexpr(_W2)
KV_WORD_3 = tl.constexpr(_W3)


@triton.jit
def codebook(index):
    """uint8 indices 0-15 -> float32 kvalues_iq4nl[index]."""
    code = index.to(tl.int32)
    word = tl.where(code < 8, tl.where(code < 4, KV_WORD_0, KV_WORD_1), tl.where(code < 12, KV_WORD_2, KV_WORD_3))
    byte = (word >> ((code & 3) * 8)) & 255
    return byte.to(tl.int8).to(tl.float32)


@triton.jit(do_not_specialize=["n_blocks"])
def iq4_nl(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # d, qs[16]: byte i holds elements i (low nibble) and i + 16
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 18, 0)
    values = codebook(nibbles(load_bytes(src, b, exists, 18, 2, 16))) * d[:, None]
    store_values(dst, b, exists, values, 32)


@triton.jit(do_not_specialize=["n_blocks"])
def iq4_xs(src, dst, n_blocks, BLOCKS: tl.constexpr):
    # d, scales_h (uint16: bits 2s, 2s + 1 are the top of sub-block s's scale), scales_l[4] (low
    # nibble: sub-block 2i, high: 2i + 1), qs[128]: 16 bytes per sub-block of 32, as IQ4_NL
    b, exists = program_blocks(n_blocks, BLOCKS)
    d = fp16_at(src, b, exists, 136, 0)
    scales_h = le16(load_bytes(src, b, exists, 136, 2, 2)).to(tl.int32)
    scales_l = load_bytes(src, b, exists, 136, 4, 4)
    qs = tl.reshape(load_bytes(src, b, exists, 136, 8, 128), (BLOCKS * 8, 16))
    low = tl.reshape(tl.join(scales_l & 15, scales_l >> 4), (BLOCKS, 8))
    high = (scales_h[:, None] >> (2 * tl.arange(0, 8))[None, :]) & 3
    factor = ((low.to(tl.int32) | (high << 4)) - 32).to(tl.float32) * d[:, None]
    q = tl.reshape(codebook(nibbles(qs)), (BLOCKS, 8, 32))
    store_values(dst, b, exists, q * factor[:, :, None], 256)


KERNELS = [
    TritonKernel(T.IQ4_NL, iq4_nl, BLOCKS_PER_PROGRAM, scale_fields=(0,)),
    TritonKernel(T.IQ4_XS, iq4_xs, 16, scale_fields=(0,)),
]
