"""Quantizers for the 256-element K-quants, as ggml's quantize_row_q*_K_ref (no importance matrix).

Each block: a scale (and min) per sub-block from a search (search.py), the sub-block scales
quantized to 4/6/8 bits against a block-wide fp16 d (and dmin), then every weight re-rounded
against its sub-block's final (stored) scale. A sub-block whose stored scale is zero keeps
the levels of its search, as ggml does. Byte layouts follow ggml's block_q*_K structs (see the
dequant kernels in ops/ggml/kernels/kquants.py).
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

from .common import (
    GROUP_MAX_EPS, correctly_rounded_sqrt, elements_first, first_absmax, fp16_bytes, fp16_round, nearest_int,
    pack_fields, positive_max, scalar_over, sequential_sum,
)
from .search import make_q3_quants, make_qkx2_quants, make_qp_quants, make_qx_quants_rmse1

QK_K = 256


def _search_layout(blocks: torch.Tensor, group: int) -> torch.Tensor:
    """(m, 256) -> (group, m * 256 // group): one column per sub-block, element index first."""
    return elements_first(blocks.reshape(-1, group))


def _per_block(values: torch.Tensor, m: int) -> torch.Tensor:
    """(n, m * sub_blocks) or (m * sub_blocks,) search output -> (m, sub_blocks[, n])."""
    if values.dim() == 1:
        return values.view(m, -1)
    return values.t().reshape(m, -1, values.shape[0])


def _requantize(blocks: torch.Tensor, levels: torch.Tensor, d: torch.Tensor, dm: torch.Tensor | None,
                low: int, high: int, offset: int) -> torch.Tensor:
    """Levels against the stored sub-block scales: clamp(nearest_int((x [+ dm]) / d)) + offset.

    blocks, levels: (m, sub_blocks, n); d, dm: (m, sub_blocks). Where d is zero ggml skips the
    sub-block and keeps the search's levels.
    """
    shifted = blocks if dm is None else blocks + dm.unsqueeze(-1)
    fresh = nearest_int(shifted / d.unsqueeze(-1)).clamp(low, high) + offset
    return torch.where((d != 0).unsqueeze(-1), fresh, levels)


def _crumbs_128(levels: torch.Tensor) -> torch.Tensor:
    """(m, 256) values 0..3 -> (m, 64): byte 32h + l holds elements 128h + 32k + l at bits 2k."""
    m = levels.shape[0]
    return pack_fields(levels.view(m, 2, 4, 32).transpose(2, 3), 2).reshape(m, 64)


def _nibbles_64(levels: torch.Tensor) -> torch.Tensor:
    """(m, 256) values -> (m, 128): byte 32c + l holds elements 64c + l (low 4 bits) and 64c + 32 + l (high)."""
    m = levels.shape[0]
    return pack_fields(levels.view(m, 4, 2, 32).transpose(2, 3).to(torch.int32) & 0x0F, 4).reshape(m, 128)


def _scales_6bit_k4(scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 8 6-bit scales and mins (m, 8) int32 -> the 12 packed bytes (get_scale_min_k4's inverse)."""
    low_scales = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    low_mins = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    high = (scales[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return torch.cat((low_scales, low_mins, high), dim=1).to(torch.uint8)


def _byte(values: torch.Tensor) -> torch.Tensor:
    """nearest_int then the C conversion to uint8_t (modulo 256), as int32."""
    return nearest_int(values).to(torch.int32) & 0xFF


def _scale_min_blocks(blocks: torch.Tensor, group: int, nmax: int, weights_of, rmin: float, rdelta: float,
                      nstep: int, use_mad: bool):
    m = blocks.shape[0]
    x = _search_layout(blocks, group)
    levels, scale, the_min = make_qkx2_quants(x, weights_of(x), nmax, rmin, rdelta, nstep, use_mad)
    return _per_block(levels, m), _per_block(scale, m), _per_block(the_min, m)


def _q4_k_weights(x: torch.Tensor) -> torch.Tensor:
    """av_x + |x| with av_x the sub-block's root mean square."""
    mean_square = sequential_sum(x * x) / x.shape[0]
    return correctly_rounded_sqrt(mean_square) + x.abs()


def _sigma2(blocks: torch.Tensor) -> torch.Tensor:
    """(m, n) -> (m,): 2 * sum(x^2) / n, the sum left to right (ggml's sigma2 for importance weights)."""
    return 2 * sequential_sum(elements_first(blocks * blocks)) / blocks.shape[1]


def importance_weights(blocks: torch.Tensor, quant_weights: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """qw * sqrtf(sigma2 + x^2): ggml's element weights from an importance matrix.

    blocks, quant_weights: (m, ..., n); sigma2: (m,)."""
    shape = (-1,) + (1,) * (blocks.dim() - 1)
    return quant_weights * correctly_rounded_sqrt(sigma2.view(shape) + blocks * blocks)


def _k4_imatrix_scales(blocks: torch.Tensor, quant_weights: torch.Tensor, nmax: int):
    """Q4_K/Q5_K with an importance matrix (ggml's quantize_row_q4_K_impl/_q5_K_impl): the search
    weighted by qw * sqrt(sigma2 + x^2) with a wider grid (make_qkx3_quants: -0.9 + 0.05 * is,
    37 steps; the same algorithm as make_qkx2_quants once weights are given), then the sub-block
    scales and mins quantized by make_qp_quants weighted by each sub-block's weight sum."""
    m = blocks.shape[0]
    weights = importance_weights(blocks.view(m, 8, 32), quant_weights.view(m, 8, 32), _sigma2(blocks))
    columns = _search_layout(weights.reshape(m, QK_K), 32)
    levels, scales, mins = make_qkx2_quants(_search_layout(blocks, 32), columns, nmax, -0.9, 0.05, 36, False)
    levels, scales, mins = _per_block(levels, m), _per_block(scales, m), _per_block(mins, m)
    sums = sequential_sum(columns).view(m, 8).t()  # (8, m): per sub-block weight sum
    ls, d = make_qp_quants(scales.t().contiguous(), 63, sums)
    lm, dmin = make_qp_quants(mins.t().contiguous(), 63, sums)
    ls = (ls.t().to(torch.int32) & 0xFF).clamp(max=63)
    lm = (lm.t().to(torch.int32) & 0xFF).clamp(max=63)
    return levels, ls, lm, fp16_round(d), fp16_round(dmin)


def _k4_scales(blocks: torch.Tensor, nmax: int, nstep: int, rmin: float, quant_weights: torch.Tensor | None = None):
    """Q4_K/Q5_K: the header bytes (d, dmin, 12 scale bytes) and every element's level."""
    if quant_weights is not None:
        levels, ls, lm, d, dmin = _k4_imatrix_scales(blocks, quant_weights, nmax)
    else:
        levels, scales, mins = _scale_min_blocks(blocks, 32, nmax, _q4_k_weights, rmin, 0.1, nstep, False)
        max_scale = positive_max(scales, 1)
        max_min = positive_max(mins, 1)
        inv_scale = torch.where(max_scale > 0, scalar_over(63, max_scale), torch.zeros_like(max_scale))
        inv_min = torch.where(max_min > 0, scalar_over(63, max_min), torch.zeros_like(max_min))
        ls = _byte(inv_scale.unsqueeze(1) * scales).clamp(max=63)
        lm = _byte(inv_min.unsqueeze(1) * mins).clamp(max=63)
        d = fp16_round(max_scale / 63)
        dmin = fp16_round(max_min / 63)
    levels = _requantize(blocks.view(-1, 8, 32), levels, d.unsqueeze(1) * ls, dmin.unsqueeze(1) * lm, 0, nmax, 0)
    header = torch.cat((fp16_bytes(d), fp16_bytes(dmin), _scales_6bit_k4(ls, lm)), dim=1)
    return header, levels.reshape(-1, QK_K)


def quantize_q4_k(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    header, levels = _k4_scales(blocks, 15, 20, -1.0, quant_weights)
    return torch.cat((header, _nibbles_64(levels)), dim=1)


def quantize_q5_k(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    header, levels = _k4_scales(blocks, 31, 15, -0.5, quant_weights)
    m = blocks.shape[0]
    fifth = (levels.to(torch.int32) >> 4).view(m, 8, 32).transpose(1, 2)  # bit k of byte j: element 32k + j
    return torch.cat((header, pack_fields(fifth, 1), _nibbles_64(levels)), dim=1)


def _q2_k_imatrix_scales(blocks: torch.Tensor, quant_weights: torch.Tensor):
    """Q2_K with an importance matrix (ggml's quantize_row_q2_K_impl): weights qw * sqrt(sigma2 + x^2)
    with sigma2 = sum(x^2) / 256 (not doubled, unlike Q3_K-Q5_K), the make_qkx3_quants grid, and
    the 4-bit sub-block scales and mins by make_qp_quants weighted by the sub-block weight sums."""
    m = blocks.shape[0]
    sigma2 = sequential_sum(elements_first(blocks * blocks)) / QK_K
    weights = importance_weights(blocks.view(m, 16, 16), quant_weights.view(m, 16, 16), sigma2)
    columns = _search_layout(weights.reshape(m, QK_K), 16)
    levels, scales, mins = make_qkx2_quants(_search_layout(blocks, 16), columns, 3, -0.9, 0.05, 36, False)
    levels, scales, mins = _per_block(levels, m), _per_block(scales, m), _per_block(mins, m)
    sums = sequential_sum(columns).view(m, 16).t()
    ls, d = make_qp_quants(scales.t().contiguous(), 15, sums)
    lm, dmin = make_qp_quants(mins.t().contiguous(), 15, sums)
    packed = ((ls.t().to(torch.int32) & 0xFF) | ((lm.t().to(torch.int32) & 0xFF) << 4)) & 0xFF
    return levels, packed, fp16_round(d), fp16_round(dmin)


def quantize_q2_k(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    if quant_weights is not None:
        levels, packed, d, dmin = _q2_k_imatrix_scales(blocks, quant_weights)
    else:
        levels, scales, mins = _scale_min_blocks(blocks, 16, 3, torch.abs, -0.5, 0.1, 15, True)
        max_scale = positive_max(scales, 1)
        max_min = positive_max(mins, 1)
        has_scale = (max_scale > 0).unsqueeze(1)
        has_min = (max_min > 0).unsqueeze(1)
        ls = torch.where(has_scale, _byte(scalar_over(15, max_scale).unsqueeze(1) * scales), 0)
        lm = torch.where(has_min, _byte(scalar_over(15, max_min).unsqueeze(1) * mins), 0)
        packed = (ls | (lm << 4)) & 0xFF
        d = torch.where(has_scale.squeeze(1), fp16_round(max_scale / 15), 0.0)
        dmin = torch.where(has_min.squeeze(1), fp16_round(max_min / 15), 0.0)
    levels = _requantize(blocks.view(-1, 16, 16), levels, d.unsqueeze(1) * (packed & 0x0F),
                         dmin.unsqueeze(1) * (packed >> 4), 0, 3, 0)
    return torch.cat((packed.to(torch.uint8), _crumbs_128(levels.reshape(-1, QK_K)), fp16_bytes(d), fp16_bytes(dmin)), dim=1)


def quantize_q3_k(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    """With an importance matrix (ggml's quantize_row_q3_K_impl) the sub-blocks are searched by
    make_qx_quants weighted by qw * sqrt(sigma2 + x^2), and their scales quantized to 6 bits by the
    same search weighted by the sub-block weight sums."""
    m = blocks.shape[0]
    if quant_weights is not None:
        weights = importance_weights(blocks.view(m, 16, 16), quant_weights.view(m, 16, 16), _sigma2(blocks))
        columns = _search_layout(weights.reshape(m, QK_K), 16)
        levels, scales = make_qx_quants_rmse1(_search_layout(blocks, 16), 4, columns)
        levels = _per_block(levels, m)
        sums = sequential_sum(columns).view(m, 16).t().contiguous()
        ls, d = make_qx_quants_rmse1(scales.view(m, 16).t().contiguous(), 32, sums)
        ls, d = ls.t().to(torch.int32), fp16_round(d)
    else:
        levels, scales = make_q3_quants(_search_layout(blocks, 16), 4)
        levels, scales = _per_block(levels, m), _per_block(scales, m)
        max_scale = first_absmax(scales, 1)
        has_scale = (max_scale != 0).unsqueeze(1)
        iscale = scalar_over(-32, max_scale)
        ls = torch.where(has_scale, nearest_int(iscale.unsqueeze(1) * scales).clamp(-32, 31) + 32, 0).to(torch.int32)
        d = torch.where(has_scale.squeeze(1), fp16_round(1 / iscale), 0.0)
    levels = _requantize(blocks.view(m, 16, 16), levels, d.unsqueeze(1) * (ls - 32), None, -4, 3, 4)
    levels = levels.reshape(m, QK_K).to(torch.int32)
    # 16 6-bit scales (+32): low nibbles in bytes 0-7 (scales 0-7 low, 8-15 high), top 2 bits in
    # bytes 8-11 (bit pair k of byte i: scale 4k + i).
    low = pack_fields((ls & 0x0F).view(m, 2, 8).transpose(1, 2), 4)
    high = pack_fields((ls >> 4).view(m, 4, 4).transpose(1, 2), 2)
    hmask = pack_fields((levels >> 2).view(m, 8, 32).transpose(1, 2), 1)  # bit k of byte j: element 32k + j
    return torch.cat((hmask, _crumbs_128(levels & 3), low, high, fp16_bytes(d)), dim=1)


def quantize_q6_k(blocks: torch.Tensor, quant_weights: torch.Tensor | None = None) -> torch.Tensor:
    """With an importance matrix ggml's quantize_row_q6_K_impl uses the raw qw as the search's weights."""
    m = blocks.shape[0]
    weights = None if quant_weights is None else _search_layout(quant_weights, 16)
    levels, scales = make_qx_quants_rmse1(_search_layout(blocks, 16), 32, weights)
    levels, scales = _per_block(levels, m), _per_block(scales, m)
    max_scale = first_absmax(scales, 1)
    zero = max_scale.abs() < GROUP_MAX_EPS
    iscale = scalar_over(-128, max_scale)
    d = fp16_round(1 / iscale)
    ls = nearest_int(iscale.unsqueeze(1) * scales).clamp(max=127)
    levels = _requantize(blocks.view(m, 16, 16), levels, d.unsqueeze(1) * ls, None, -32, 31, 32)
    levels = levels.reshape(m, 2, 4, 32).to(torch.int32)  # (half, quarter k, l)
    low = (levels & 0x0F).view(m, 2, 2, 2, 32).permute(0, 1, 3, 4, 2)  # (half, k % 2, l, k // 2)
    ql = pack_fields(low, 4).reshape(m, 128)
    qh = pack_fields((levels >> 4).transpose(2, 3), 2).reshape(m, 64)
    out = torch.cat((ql, qh, ls.to(torch.int8).view(torch.uint8), fp16_bytes(d)), dim=1)
    return torch.where(zero.unsqueeze(1), torch.zeros_like(out), out)


# The types whose quantizer takes per-column importance weights (quant_weights: (m, 256)).
IMATRIX_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)

QUANTIZERS = {
    T.Q2_K: quantize_q2_k,
    T.Q3_K: quantize_q3_k,
    T.Q4_K: quantize_q4_k,
    T.Q5_K: quantize_q5_k,
    T.Q6_K: quantize_q6_k,
}
