"""Kernels for the 256-element K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Every K-quant value is (d * sub_scale) * q [- dmin * sub_min]: each type's BlockFormat computes
the per-sub-block d * sub_scale and dmin * sub_min in float32 as gguf-py does, and unpacks q.

Element order inside a block follows ggml's block_q*_K structs: the quant bytes are split into
groups of 32 (or 64 for Q6_K's low nibbles), and plane k of a group (bit pair k, nibble k,
bit k) is a run of 32 consecutive output elements.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .blocks import (
    QK_K, BlockFormat, bit_planes, byte_index, crumb_planes, device_table, fp16_field, nibble_planes,
    random_with_fp16_fields, words,
)
from . import blocks as shared


@device_table
def _word_nibble_shifts() -> np.ndarray:
    return np.array([0, 4], dtype=np.int32)


@device_table
def _word_crumb_shifts() -> np.ndarray:
    return np.array([0, 2, 4, 6], dtype=np.int32)


# Scale bytes are decoded four at a time as little-endian int32 words (the masks keep each
# byte's bits apart): the per-block decoding is a dozen small ops per chunk instead of dozens.


def _scales_q4_k_q5_k(blocks: torch.Tensor):
    """d * sub_scale and dmin * sub_min from d, dmin and 12 bytes of 6-bit scales and mins.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7 take
    their low 4 bits from bytes 8-11 (low/high nibble) and their top 2 bits from the top 2
    bits of bytes 0-3 / 4-7.
    """
    scale_words = words(blocks, 4, 16)
    first = scale_words[:, 0:2]  # scales 0-3, mins 0-3
    third = scale_words[:, 2:3]
    low = first & 0x3F3F3F3F
    high = ((first >> 2) & 0x30303030) | ((third >> _word_nibble_shifts(blocks.device, torch.int32)) & 0x0F0F0F0F)
    six_bit = torch.stack((low, high), dim=2).view(torch.uint8)  # (m, scales/mins, 8)
    values = fp16_field(blocks, 0, count=2).float().unsqueeze(-1) * six_bit.float()
    return values[:, 0], values[:, 1]


# Unpackers: bit work runs on flat byte runs; fields whose planes must be combined are first
# laid out with the block index inside the plane (fields, blocks, bytes), so that combining
# planes is flat too. The one copy into the float32 values then restores block order.

# Q2_K: scales[16] (low nibble: scale, high nibble: min of a 16-element sub-block), qs[64],
# d, dmin. Bit pair k of qs byte 32h + l is element 128h + 32k + l.

def _unpack_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    crumbs = crumb_planes(blocks, 16, 80).view(4, m, 2, 32)
    return crumbs.permute(1, 2, 0, 3)


def _scales_q2_k(blocks: torch.Tensor):
    factors = fp16_field(blocks, 80, count=2).float().t().unsqueeze(-1)  # d, dmin: (2, m, 1)
    values = nibble_planes(blocks[:, 0:16]).float() * factors
    return values[0], values[1]


# Q3_K: hmask[32], qs[64], scales[12], d. q = (bit pair of qs, as in Q2_K) - 4, plus 4 where
# bit j of hmask byte l is set (element 32j + l). 16 6-bit scales stored with +32: low 4 bits
# in bytes 0-7 (low nibbles: scales 0-7, high: 8-15), top 2 bits in bytes 8-11 (bit pair k
# of byte i belongs to scale 4k + i).

@device_table
def _high_bit_minus_4() -> np.ndarray:
    """Q3_K, per hmask byte: its 8 bits as 8 bytes (int64 little-endian) of 0 (bit set) or -4 (clear).

    Added to the bit pair in uint8 (wrapping), this gives q as int8 directly.
    """
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.where(bits == 1, 0, 252).astype(np.uint8).view("<i8").reshape(256)


def _unpack_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    qs = blocks[:, 32:96].view(m, 2, 32).transpose(0, 1)
    q = crumb_planes(qs)  # (bit pair k, half h, block, l)
    if shared.fused_arithmetic(blocks.device):
        # one gather of 0 / -4 per bit, added in uint8: fewer passes than planes and a subtraction
        high = _high_bit_minus_4(blocks.device, torch.int64).index_select(0, byte_index(blocks[:, 0:32]))
        q += high.view(torch.uint8).view(m, 32, 2, 4).permute(3, 2, 0, 1)  # bit 4h + k of byte l
        return q.view(torch.int8).permute(2, 1, 0, 3)
    hmask = bit_planes(blocks[:, 0:32]).view(2, 4, m, 32)  # (h, k, block, l): bit 4h + k
    q.add_(hmask.transpose(0, 1), alpha=4)
    signed = q.view(torch.int8)
    signed.sub_(4)
    return signed.permute(2, 1, 0, 3)


def _scales_q3_k(blocks: torch.Tensor):
    m = blocks.shape[0]
    scale_words = words(blocks, 96, 108)
    # Words of scales 0-3, 4-7 (low nibbles of bytes 0-7), then 8-11, 12-15 (high nibbles).
    low = (scale_words[:, None, 0:2] >> _word_nibble_shifts(blocks.device, torch.int32).view(2, 1)) & 0x0F0F0F0F
    high = (scale_words[:, 2:3] >> _word_crumb_shifts(blocks.device, torch.int32)) & 0x03030303
    six_bit = (low.view(m, 4) | (high << 4)).view(torch.int8) - 32
    return fp16_field(blocks, 108).float() * six_bit.float(), None


# Q4_K: d, dmin, scales[12], qs[128]; Q5_K adds qh[32] before qs. qs byte 32c + l holds
# elements 64c + l (low nibble) and 64c + 32 + l (high); Q5_K's bit j of qh byte l is the
# fifth bit of element 32j + l.

def _unpack_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    nibbles = nibble_planes(blocks, 16, 144).view(2, m, 4, 32)
    return nibbles.permute(1, 2, 0, 3)


def _unpack_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    qs = blocks[:, 48:176].view(m, 4, 32).transpose(0, 1)
    q = nibble_planes(qs)  # (nibble, group c, block, l)
    fifth = bit_planes(blocks[:, 16:48]).view(4, 2, m, 32)  # (c, nibble, block, l): bit 2c + nibble
    q.add_(fifth.transpose(0, 1), alpha=16)
    return q.permute(2, 1, 0, 3)


# Q6_K: ql[128], qh[64], scales[16] (int8), d. Half h (128 elements): plane k = 2 * nibble + kk
# (32 elements) takes its low 4 bits from nibble `nibble` of ql byte 64h + 32kk + l and its
# top 2 bits from bit pair k of qh byte 32h + l. q is stored with +32.

def _unpack_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    ql = blocks[:, 0:128].view(m, 2, 2, 32).permute(2, 0, 1, 3)  # (kk, block, h, l)
    q = nibble_planes(ql)  # (nibble, kk, block, h, l)
    q.add_(crumb_planes(blocks[:, 128:192]).view(2, 2, m, 2, 32), alpha=16)
    signed = q.view(torch.int8)
    signed.sub_(32)
    return signed.permute(2, 3, 0, 1, 4)


def _scales_q6_k(blocks: torch.Tensor):
    return fp16_field(blocks, 208).float() * blocks[:, 192:208].contiguous().view(torch.int8).float(), None


# widest: the planes of the whole block (bit pairs: 4x its bytes, nibbles: 2x).

# Bounds keep |w| below about 1: |sub_scale * q| is at most 15*3, 32*4, 63*15, 63*31, 128*32,
# and dmin * sub_min at most 15 or 63 times dmin.
TYPES = {
    T.Q2_K: (
        BlockFormat(QK_K, scales=_scales_q2_k, unpack=_unpack_q2_k, subtract_min=True, widest=4 * 84),
        random_with_fp16_fields(T.Q2_K, {80: (1 / 45, False), 82: (1 / 30, False)}),
    ),
    T.Q3_K: (
        BlockFormat(QK_K, scales=_scales_q3_k, unpack=_unpack_q3_k, widest=4 * 110),
        random_with_fp16_fields(T.Q3_K, {108: (1 / 128, False)}),
    ),
    T.Q4_K: (
        BlockFormat(QK_K, scales=_scales_q4_k_q5_k, unpack=_unpack_q4_k, subtract_min=True, widest=2 * 144),
        random_with_fp16_fields(T.Q4_K, {0: (1 / 945, False), 2: (1 / 126, False)}),
    ),
    T.Q5_K: (
        BlockFormat(QK_K, scales=_scales_q4_k_q5_k, unpack=_unpack_q5_k, subtract_min=True, widest=2 * 176),
        random_with_fp16_fields(T.Q5_K, {0: (1 / 1953, False), 2: (1 / 126, False)}),
    ),
    T.Q6_K: (
        BlockFormat(QK_K, scales=_scales_q6_k, unpack=_unpack_q6_k, widest=2 * 210),
        random_with_fp16_fields(T.Q6_K, {208: (1 / 4096, False)}),
    ),
}
