"""Quantizers for the 32-element legacy types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Each equals ggml's quantize_row_*_ref and gguf-py's `quants.quantize` byte for byte: one scale
(and min) per block from its extreme value, 1/d as the multiplier, truncation after adding
a half (or, for Q8_0, C's roundf, half away from zero).
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

from .common import as_bytes, first_absmax, fp16_bytes, pack_fields


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """ggml's `id = d ? 1.0f/d : 0.0f`."""
    return torch.where(d != 0, 1.0 / d, torch.zeros_like(d))


def _roundf(values: torch.Tensor) -> torch.Tensor:
    """C's roundf (half away from zero), exactly as gguf-py writes it: no `abs + 0.5` rounding."""
    magnitude = values.abs()
    floored = magnitude.floor()
    return values.sign() * (floored + (2 * (magnitude - floored)).floor())


def _truncate(values: torch.Tensor, offset: float, top: int) -> torch.Tensor:
    """MIN(top, (int)(values + offset)) for values + offset >= 0."""
    return (values + offset).trunc().clamp(max=top)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(m, 32) values 0..15 -> (m, 16) bytes: element j in the low nibble of byte j, j + 16 in the high."""
    halves = q.view(q.shape[0], 2, 16).transpose(1, 2)
    return pack_fields(halves.to(torch.int32) & 0x0F, 4)


def _fifth_bits(q: torch.Tensor) -> torch.Tensor:
    """(m, 32) values 0..31 -> (m, 4) bytes: bit 4 of element j at bit j of the little-endian word."""
    bits = (q.to(torch.int32) >> 4).view(q.shape[0], 4, 8)
    return pack_fields(bits, 1)


def _symmetric(blocks: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0: d = max / -levels (the signed extreme maps to -levels), q = (x/d) + levels."""
    d = first_absmax(blocks, 1) / -levels
    q = _truncate(blocks * _inverse(d).unsqueeze(1), levels + 0.5, 2 * levels - 1)
    return d, q


def _asymmetric(blocks: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1/Q5_1: d = (max - min) / top, q = (x - min)/d."""
    low = blocks.amin(dim=1)
    d = (blocks.amax(dim=1) - low) / top
    q = _truncate((blocks - low.unsqueeze(1)) * _inverse(d).unsqueeze(1), 0.5, top)
    return d, low, q


def quantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d, q = _symmetric(blocks, 8)
    return torch.cat((fp16_bytes(d), _nibbles(q)), dim=1)


def quantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d, q = _symmetric(blocks, 16)
    return torch.cat((fp16_bytes(d), _fifth_bits(q), _nibbles(q)), dim=1)


def quantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, low, q = _asymmetric(blocks, 15)
    return torch.cat((fp16_bytes(d), fp16_bytes(low), _nibbles(q)), dim=1)


def quantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, low, q = _asymmetric(blocks, 31)
    return torch.cat((fp16_bytes(d), fp16_bytes(low), _fifth_bits(q), _nibbles(q)), dim=1)


def quantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = blocks.abs().amax(dim=1) / 127
    q = _roundf(blocks * _inverse(d).unsqueeze(1))
    return torch.cat((fp16_bytes(d), q.to(torch.int8).view(torch.uint8)), dim=1)


QUANTIZERS = {
    T.Q4_0: quantize_q4_0,
    T.Q4_1: quantize_q4_1,
    T.Q5_0: quantize_q5_0,
    T.Q5_1: quantize_q5_1,
    T.Q8_0: quantize_q8_0,
}
