"""Kernels for the 256-element K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Every K-quant value is (d * sub_scale) * q [- dmin * sub_min], where d * sub_scale and
(d * sub_scale) * q are exact in float32 and the final subtraction rounds once; the kernels
keep gguf-py's order of operations in float32 so the float32 result is identical, and round
that once for other output dtypes (see run_chunked).

Element order inside a block follows ggml's block_q*_K structs: the quant bytes are split into
groups of 32 (or 64 for Q6_K's low nibbles); "plane" k of a group (bit pair k, nibble k, ...)
is a run of 32 consecutive output elements.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .legacy import bit_planes, crumb_planes, fp16_field, random_bytes, random_fp16, run_chunked

QK_K = 256


def _scale_by_sub_block(out: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None) -> None:
    """out (m, 256) holding q -> scale * q [- minimum], with one scale per equal sub-block."""
    n_sub = scale.shape[1]
    values = out.view(out.shape[0], n_sub, QK_K // n_sub)
    values.mul_(scale.unsqueeze(-1))
    if minimum is not None:
        values.sub_(minimum.unsqueeze(-1))


def _six_bit_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (uint8, (m, 8) each).

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales/mins 4-7 take
    their low 4 bits from bytes 8-11 (low/high nibble) and their top 2 bits from the top 2
    bits of bytes 0-3 / 4-7.
    """
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)], dim=1)
    mins = torch.cat([second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)], dim=1)
    return scales, mins


def _fill_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # scales[16] (low nibble: scale, high nibble: min), qs[64], d, dmin
    sub = blocks[:, 0:16]
    d = fp16_field(blocks, 80, out.dtype)
    dmin = fp16_field(blocks, 82, out.dtype)
    out.view(-1, 2, 4, 32).copy_(crumb_planes(blocks[:, 16:80]))
    _scale_by_sub_block(out, d * (sub & 0x0F), dmin * (sub >> 4))


def _fill_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # hmask[32], qs[64], scales[12], d
    m = blocks.shape[0]
    packed = blocks[:, 96:108]
    low, high = packed[:, 0:8], packed[:, 8:12]
    # 16 6-bit scales: low 4 bits from bytes 0-7 (low nibbles: 0-7, high: 8-15), top 2 bits
    # from bytes 8-11 (bit pair k of byte i belongs to scale 4k + i); stored with +32 offset.
    six_bit = torch.cat([low & 0x0F, low >> 4], dim=1) | (crumb_planes(high, width=4).view(m, 16) << 4)
    scale = six_bit.view(torch.int8) - 32
    d = fp16_field(blocks, 108, out.dtype)
    # q = low 2 bits - 4 where the hmask bit is clear (the bit acts as "no offset").
    q = crumb_planes(blocks[:, 32:96]).view(m, 8, 32) | (bit_planes(blocks[:, 0:32]) << 2)
    out.copy_(q.view(m, QK_K).view(torch.int8) - 4)
    _scale_by_sub_block(out, d * scale)


def _fill_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, dmin, scales[12], qs[128]
    m = blocks.shape[0]
    d = fp16_field(blocks, 0, out.dtype)
    dmin = fp16_field(blocks, 2, out.dtype)
    scales, mins = _six_bit_scales_and_mins(blocks[:, 4:16])
    qs = blocks[:, 16:144].reshape(m, 4, 32)
    nibbles = out.view(m, 4, 2, 32)
    nibbles[:, :, 0].copy_(qs & 0x0F)
    nibbles[:, :, 1].copy_(qs >> 4)
    _scale_by_sub_block(out, d * scales, dmin * mins)


def _fill_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # d, dmin, scales[12], qh[32], qs[128]
    m = blocks.shape[0]
    d = fp16_field(blocks, 0, out.dtype)
    dmin = fp16_field(blocks, 2, out.dtype)
    scales, mins = _six_bit_scales_and_mins(blocks[:, 4:16])
    q = bit_planes(blocks[:, 16:48]) << 4
    qs = blocks[:, 48:176].reshape(m, 4, 32)
    nibbles = q.view(m, 4, 2, 32)
    nibbles[:, :, 0] |= qs & 0x0F
    nibbles[:, :, 1] |= qs >> 4
    out.copy_(q.view(m, QK_K))
    _scale_by_sub_block(out, d * scales, dmin * mins)


def _fill_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # ql[128], qh[64], scales[16] (int8), d
    m = blocks.shape[0]
    scale = blocks[:, 192:208].view(torch.int8)
    d = fp16_field(blocks, 208, out.dtype)
    # Half h of the block: plane k (k = 0..3) takes bit pair k of qh[h*32 + l] as its top
    # bits; planes 0-1 take the low nibbles of ql[h*64 + 0..63], planes 2-3 the high ones.
    q = crumb_planes(blocks[:, 128:192]) << 4
    ql = blocks[:, 0:128].reshape(m, 2, 2, 32)
    q[:, :, 0:2] |= ql & 0x0F
    q[:, :, 2:4] |= ql >> 4
    out.copy_(q.view(m, QK_K).view(torch.int8) - 32)
    _scale_by_sub_block(out, d * scale)


def _kernel(fill):
    def kernel(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return run_chunked(blocks, dtype, QK_K, fill)

    kernel.__name__ = "dequantize" + fill.__name__.removeprefix("_fill")
    return kernel


def _random(ggml_type: T, fp16_fields: dict[int, float]):
    """Random blocks whose fp16 fields at the given offsets hold positive values up to the bound."""

    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = random_bytes(rng, n_blocks, ggml_type)
        for offset, magnitude in fp16_fields.items():
            blocks[:, offset : offset + 2] = random_fp16(rng, n_blocks, magnitude, signed=False)
        return blocks

    return generate


KERNELS = {
    T.Q2_K: _kernel(_fill_q2_k),
    T.Q3_K: _kernel(_fill_q3_k),
    T.Q4_K: _kernel(_fill_q4_k),
    T.Q5_K: _kernel(_fill_q5_k),
    T.Q6_K: _kernel(_fill_q6_k),
}

# Bounds keep |w| below about 1: |sub_scale * q| is at most 15*3, 32*4, 63*15, 63*31, 128*32,
# and dmin * sub_min at most 15 or 63 times dmin.
RANDOM_BLOCKS = {
    T.Q2_K: _random(T.Q2_K, {80: 1 / 45, 82: 1 / 30}),
    T.Q3_K: _random(T.Q3_K, {108: 1 / 128}),
    T.Q4_K: _random(T.Q4_K, {0: 1 / 945, 2: 1 / 126}),
    T.Q5_K: _random(T.Q5_K, {0: 1 / 1953, 2: 1 / 126}),
    T.Q6_K: _random(T.Q6_K, {208: 1 / 4096}),
}
