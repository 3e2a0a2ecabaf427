"""Kernels for the 256-element K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Every K-quant value is (d * sub_scale) * q [- dmin * sub_min]: the kernels compute the
per-sub-block d * sub_scale and dmin * sub_min once for all blocks, in float32 as gguf-py does,
and hand them with an unpacker of q to `dequantize_blocks`.

Element order inside a block follows ggml's block_q*_K structs: the quant bytes are split into
groups of 32 (or 64 for Q6_K's low nibbles), and plane k of a group (bit pair k, nibble k,
bit k) is a run of 32 consecutive output elements.
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

from .legacy import bit_planes, crumb_planes, dequantize_blocks, fp16_field, nibble_planes, random_with_fp16_fields

QK_K = 256


def _six_bit_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (uint8, (n, 8) each).

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7 take
    their low 4 bits from bytes 8-11 (low/high nibble) and their top 2 bits from the top 2
    bits of bytes 0-3 / 4-7.
    """
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)], dim=1)
    mins = torch.cat([second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)], dim=1)
    return scales, mins


# Q2_K: scales[16] (low nibble: scale, high nibble: min of a 16-element sub-block), qs[64],
# d, dmin. Bit pair k of qs byte 32h + l is element 128h + 32k + l.

def _unpack_q2_k(blocks: torch.Tensor, values: torch.Tensor) -> None:
    m = blocks.shape[0]
    crumbs = crumb_planes(blocks)[:, :, 16:80].view(4, m, 2, 32)
    values.view(m, 2, 4, 32).copy_(crumbs.permute(1, 2, 0, 3))


def _dequantize_q2_k(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    packed = blocks[:, 0:16]
    scale = fp16_field(blocks, 80) * (packed & 0x0F)
    offset = -(fp16_field(blocks, 82) * (packed >> 4))
    return dequantize_blocks(blocks, dtype, QK_K, _unpack_q2_k, scale, offset)


# Q3_K: hmask[32], qs[64], scales[12], d. q = (bit pair of qs, as in Q2_K) - 4, plus 4 where
# bit j of hmask byte l is set (element 32j + l). 16 6-bit scales stored with +32: low 4 bits
# in bytes 0-7 (low nibbles: scales 0-7, high: 8-15), top 2 bits in bytes 8-11 (bit pair k
# of byte i belongs to scale 4k + i).

def _unpack_q3_k(blocks: torch.Tensor, values: torch.Tensor) -> None:
    m = blocks.shape[0]
    low = crumb_planes(blocks)[:, :, 32:96].view(4, m, 2, 32).permute(1, 2, 0, 3)
    high = bit_planes(blocks[:, 0:32]).transpose(0, 1).view(m, 2, 4, 32)
    q = torch.add(low, high, alpha=4)
    q.view(torch.int8).sub_(4)
    values.view(m, 2, 4, 32).copy_(q.view(torch.int8))


def _dequantize_q3_k(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = blocks.shape[0]
    low, high = blocks[:, 96:104], blocks[:, 104:108]
    top_bits = crumb_planes(high).permute(1, 0, 2).reshape(n, 16)
    six_bit = torch.cat([low & 0x0F, low >> 4], dim=1) | (top_bits << 4)
    scale = fp16_field(blocks, 108) * (six_bit.view(torch.int8) - 32)
    return dequantize_blocks(blocks, dtype, QK_K, _unpack_q3_k, scale)


# Q4_K: d, dmin, scales[12], qs[128]; Q5_K adds qh[32] before qs. qs byte 32c + l holds
# elements 64c + l (low nibble) and 64c + 32 + l (high); Q5_K's bit j of qh byte l is the
# fifth bit of element 32j + l.

def _nibble_groups(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """(m, 4, 2, 32) view of the nibbles of the 128 bytes at `start`, in output order."""
    m = blocks.shape[0]
    return nibble_planes(blocks)[:, :, start : start + 128].view(2, m, 4, 32).permute(1, 2, 0, 3)


def _unpack_q4_k(blocks: torch.Tensor, values: torch.Tensor) -> None:
    values.view(-1, 4, 2, 32).copy_(_nibble_groups(blocks, 16))


def _unpack_q5_k(blocks: torch.Tensor, values: torch.Tensor) -> None:
    m = blocks.shape[0]
    fifth = bit_planes(blocks[:, 16:48]).transpose(0, 1).view(m, 4, 2, 32)
    values.view(m, 4, 2, 32).copy_(torch.add(_nibble_groups(blocks, 48), fifth, alpha=16))


def _with_six_bit_scales(unpack):
    def kernel(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        scales, mins = _six_bit_scales_and_mins(blocks[:, 4:16])
        scale = fp16_field(blocks, 0) * scales
        offset = -(fp16_field(blocks, 2) * mins)
        return dequantize_blocks(blocks, dtype, QK_K, unpack, scale, offset)

    return kernel


# Q6_K: ql[128], qh[64], scales[16] (int8), d. Half h (128 elements): plane k (32 elements)
# takes bit pair k of qh byte 32h + l as bits 4-5; planes 0-1 take the low nibbles of
# ql bytes 64h + 0..63, planes 2-3 the high nibbles. q is stored with +32.

def _unpack_q6_k(blocks: torch.Tensor, values: torch.Tensor) -> None:
    m = blocks.shape[0]
    # (m, half, nibble, 64 bytes as 2 x 32) and (m, half, bit pair as 2 x 2, 32)
    low = nibble_planes(blocks)[:, :, 0:128].view(2, m, 2, 2, 32).permute(1, 2, 0, 3, 4)
    high = crumb_planes(blocks[:, 128:192]).view(4, m, 2, 32).permute(1, 2, 0, 3).reshape(m, 2, 2, 2, 32)
    q = torch.add(low, high, alpha=16).view(torch.int8)
    q.sub_(32)
    values.view(m, 2, 2, 2, 32).copy_(q)


def _dequantize_q6_k(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    scale = fp16_field(blocks, 208) * blocks[:, 192:208].view(torch.int8)
    return dequantize_blocks(blocks, dtype, QK_K, _unpack_q6_k, scale)


KERNELS = {
    T.Q2_K: _dequantize_q2_k,
    T.Q3_K: _dequantize_q3_k,
    T.Q4_K: _with_six_bit_scales(_unpack_q4_k),
    T.Q5_K: _with_six_bit_scales(_unpack_q5_k),
    T.Q6_K: _dequantize_q6_k,
}

# Bounds keep |w| below about 1: |sub_scale * q| is at most 15*3, 32*4, 63*15, 63*31, 128*32,
# and dmin * sub_min at most 15 or 63 times dmin.
RANDOM_BLOCKS = {
    T.Q2_K: random_with_fp16_fields(T.Q2_K, {80: (1 / 45, False), 82: (1 / 30, False)}),
    T.Q3_K: random_with_fp16_fields(T.Q3_K, {108: (1 / 128, False)}),
    T.Q4_K: random_with_fp16_fields(T.Q4_K, {0: (1 / 945, False), 2: (1 / 126, False)}),
    T.Q5_K: random_with_fp16_fields(T.Q5_K, {0: (1 / 1953, False), 2: (1 / 126, False)}),
    T.Q6_K: random_with_fp16_fields(T.Q6_K, {208: (1 / 4096, False)}),
}
