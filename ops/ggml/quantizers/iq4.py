"""Quantizers for IQ4_NL (32-element blocks) and IQ4_XS (256), as ggml's quantize_iq4_nl/_xs without an
importance matrix (what llama-quantize runs: ntry = 7, weights x*x).

Levels are indices into ggml's 16 non-linear values. Per 32 weights: a scale from 15 candidates
around max / values[0], kept when sumqx^2 > best * sumq2 in ggml's order. IQ4_XS then stores
the sub-block scales as 6-bit multiples of a block-wide d = -max_scale / 32.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .common import (
    GROUP_MAX_EPS, correctly_rounded_sqrt, elements_first, first_absmax, fp16_bytes, nearest_int, pack_fields, scalar_over, sequential_sum,
)

# ggml's kvalues_iq4nl.
VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int32)
NTRY = 7


@functools.lru_cache(maxsize=None)
def _tables(device: torch.device):
    """The values as float32, and the decision thresholds val[i-1] + val[i] (compared with 2x)."""
    values = torch.from_numpy(VALUES.astype(np.float32)).to(device)
    thresholds = torch.from_numpy((VALUES[:-1] + VALUES[1:]).astype(np.float32)).to(device)
    return values, thresholds


def best_index(scaled: torch.Tensor) -> torch.Tensor:
    """ggml's best_index_int8: the level whose midpoint thresholds bracket the value (ties go up)."""
    _, thresholds = _tables(scaled.device)
    return torch.bucketize(scaled + scaled, thresholds, right=True)


def _search(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """x (32, groups), element index first -> each group's scale (0 for an all-zero group).

    weights: x*x, or (with an importance matrix) qw * sqrt(sigma2 + x^2) in x's layout."""
    values, _ = _tables(x.device)
    peak = first_absmax(x, 0)
    weights = x * x if weights is None else weights

    def sums(inverse):
        q = values[best_index(inverse * x)]
        weighted = weights * q
        return sequential_sum(weighted * x), sequential_sum(weighted * q)

    d = -peak / float(VALUES[0])
    sumqx, sumq2 = sums(1 / d)
    scale = torch.where(sumq2 > 0, sumqx / sumq2, torch.zeros_like(sumq2))
    best = scale * sumqx
    for itry in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = sums(scalar_over(itry + VALUES[0], peak))
        accept = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        new_scale = sumqx / sumq2
        scale = torch.where(accept, new_scale, scale)
        best = torch.where(accept, new_scale * sumqx, best)
    return torch.where(peak.abs() < GROUP_MAX_EPS, torch.zeros_like(scale), scale)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, 1 / d, torch.zeros_like(d))


def _pack_levels(levels: torch.Tensor) -> torch.Tensor:
    """(m, n) indices -> (m, n // 2): byte 16i + j holds elements 32i + j (low) and 32i + 16 + j (high)."""
    m = levels.shape[0]
    return pack_fields(levels.view(m, -1, 2, 16).transpose(2, 3), 4).reshape(m, -1)


def _importance(blocks: torch.Tensor, quant_weights: torch.Tensor | None) -> torch.Tensor | None:
    """qw * sqrtf(sigma2 + x^2) with sigma2 = sum(x^2) * (2 / n) over the (super-)block, as (m * n // 32, 32)."""
    if quant_weights is None:
        return None
    sigma2 = sequential_sum(elements_first(blocks * blocks)) * (2.0 / blocks.shape[1])
    weights = quant_weights * correctly_rounded_sqrt(sigma2.unsqueeze(1) + blocks * blocks)
    return elements_first(weights.reshape(-1, 32))


def quantize_iq4_nl(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    scale = _search(elements_first(blocks), _importance(blocks, quant_weights))
    levels = best_index(blocks * _inverse(scale).unsqueeze(1))
    return torch.cat((fp16_bytes(scale), _pack_levels(levels)), dim=1)


def quantize_iq4_xs(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    m = blocks.shape[0]
    scales = _search(elements_first(blocks.reshape(-1, 32)), _importance(blocks, quant_weights)).view(m, 8)
    d = -first_absmax(scales, 1) / 32
    sub = nearest_int(_inverse(d).unsqueeze(1) * scales).clamp(-32, 31)
    sub_d = d.unsqueeze(1) * sub
    levels = best_index(blocks.view(m, 8, 32) * _inverse(sub_d).unsqueeze(2)).view(m, 256)
    stored = (sub + 32).to(torch.int32)
    scales_l = pack_fields((stored & 0x0F).view(m, 4, 2), 4)
    scales_h = pack_fields((stored >> 4).view(m, 2, 4), 2)  # a little-endian uint16: scale i at bits 2i
    return torch.cat((fp16_bytes(d), scales_h, scales_l, _pack_levels(levels)), dim=1)


# Both take per-column importance weights (quant_weights: (m, block_size)).
IMATRIX_TYPES = (T.IQ4_NL, T.IQ4_XS)

QUANTIZERS = {
    T.IQ4_NL: quantize_iq4_nl,
    T.IQ4_XS: quantize_iq4_xs,
}
