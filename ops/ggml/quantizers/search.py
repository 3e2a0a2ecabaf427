"""ggml's per-group scale searches (ggml-quants.c), vectorised over groups.

Every function takes x as (n, groups): element index first (see common.py), one column per
group of n weights, and returns the group's integer levels L (float tensor, (n, groups)) and
scale (and min). The candidate scales of a search (a fixed grid: 16 to 21 of them) are
evaluated together as a (n, candidates, groups) tensor; which one wins follows ggml's
comparisons in ggml's order.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import GROUP_MAX_EPS, nearest_int, positive_max, scalar_over, sequential_sum, sequential_sum_from_first


def _pick(stacked: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stacked (..., candidates, groups), index (groups,) -> (..., groups)."""
    shape = (*stacked.shape[:-2], 1, stacked.shape[-1])
    return stacked.gather(-2, index.view(*([1] * (stacked.dim() - 1)), -1).expand(shape)).squeeze(-2)


def _grid(values) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def make_qkx2_quants(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool):
    """Levels 0..nmax with a scale and a min (x ~ scale * L - min), minimising the weighted error.

    ggml's make_qkx2_quants: start from the range, then try nstep + 1 stretched ranges, each
    fitted by least squares, keeping one when its error is lower. The candidates run in order
    because each is placed relative to the min kept so far (ggml updates `min` inside the loop).
    Returns (L, scale, the_min) with the_min >= 0 subtracted at dequantization.
    """
    low = x.amin(dim=0).clamp(max=0)
    high = x.amax(dim=0)
    sum_w = sequential_sum_from_first(weights)
    sum_x = sequential_sum_from_first(weights * x)

    def levels_for(iscale, minimum):
        return nearest_int(iscale * (x - minimum)).clamp(0, nmax)

    def error(scale, minimum, levels):
        diff = scale * levels + minimum - x
        diff = diff.abs() if use_mad else diff * diff
        return sequential_sum(weights * diff)

    iscale = scalar_over(nmax, high - low)
    scale = 1 / iscale
    minimum = low
    levels = levels_for(iscale, minimum)
    best_error = error(scale, minimum, levels)

    factors = np.float32(rmin) + np.float32(rdelta) * np.arange(nstep + 1, dtype=np.float32) + np.float32(nmax)
    for factor in factors.tolist():
        candidate = levels_for(scalar_over(factor, high - minimum), minimum)
        weighted = weights * candidate
        sum_l, sum_l2, sum_xl = sequential_sum(torch.stack((weighted, weighted * candidate, weighted * x), dim=1))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clipped = this_min > 0
        this_min = torch.where(clipped, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(clipped, sum_xl / sum_l2, this_scale)
        cur_error = error(this_scale, this_min, candidate)
        better = (det > 0) & (cur_error < best_error)
        levels = torch.where(better, candidate, levels)
        best_error = torch.where(better, cur_error, best_error)
        scale = torch.where(better, this_scale, scale)
        minimum = torch.where(better, this_min, minimum)

    flat = high == low
    levels = torch.where(flat, torch.zeros_like(levels), levels)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return levels, scale, -torch.where(flat, low, minimum)


def make_qx_quants_rmse1(x: torch.Tensor, nmax: int, weights: torch.Tensor | None = None):
    """Signed levels -nmax..nmax-1 (stored + nmax) and a scale, weights x*x (make_qx_quants, rmse_type 1)
    or the given importance weights (same layout as x).

    Tries 18 scales around nmax/max; a candidate replaces the current one when its
    sumlx^2 > best * suml2, in ggml's order (a running comparison, not an argmax).
    """
    peak = _first_absmax_rows(x)
    zero = peak.abs() < GROUP_MAX_EPS
    weights = x * x if weights is None else weights
    weighted_x = weights * x

    def levels_for(iscale):
        return nearest_int(iscale * x.unsqueeze(1) if iscale.dim() == 2 else iscale * x).clamp(-nmax, nmax - 1)

    levels = levels_for(scalar_over(-nmax, peak))
    sumlx = sequential_sum(weighted_x * levels)
    suml2 = sequential_sum(weights * levels * levels)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(suml2))
    best = scale * sumlx

    steps = [-(np.float32(nmax) + np.float32(0.1) * np.float32(s)) for s in range(-9, 10) if s != 0]
    iscales = _grid(steps).to(x.device).unsqueeze(1) / peak  # (candidates, groups)
    candidates = levels_for(iscales)
    c_sumlx = sequential_sum(weighted_x.unsqueeze(1) * candidates)
    c_suml2 = sequential_sum(weights.unsqueeze(1) * candidates * candidates)
    chosen = torch.full_like(peak, -1, dtype=torch.int64)
    for k in range(len(steps)):
        lx, l2 = c_sumlx[k], c_suml2[k]
        accept = (l2 > 0) & (lx * lx > best * l2)
        new_scale = lx / l2
        scale = torch.where(accept, new_scale, scale)
        best = torch.where(accept, new_scale * lx, best)
        chosen = torch.where(accept, k, chosen)
    picked = _pick(candidates, chosen.clamp(min=0))
    levels = torch.where(chosen >= 0, picked, levels) + nmax
    levels = torch.where(zero, torch.zeros_like(levels), levels)
    return levels, torch.where(zero, torch.zeros_like(scale), scale)


def make_q3_quants(x: torch.Tensor, nmax: int):
    """Signed levels -nmax..nmax-1 (stored + nmax) and a scale, refined element by element.

    ggml's make_q3_quants with do_rmse: start from nmax/max, then up to 5 passes over the
    elements, each moving one level to its least-squares value when that raises
    sumlx^2 / suml2. A pass that changes nothing would repeat unchanged, so running all 5
    passes gives ggml's result.
    """
    peak = _first_absmax_rows(x)
    zero = peak.abs() < GROUP_MAX_EPS
    weights = x * x
    weighted_x = weights * x
    levels = nearest_int(scalar_over(-nmax, peak) * x).clamp(-nmax, nmax - 1)
    sumlx = sequential_sum(weighted_x * levels)
    suml2 = sequential_sum(weights * levels * levels)
    for _ in range(5):
        for i in range(x.shape[0]):
            w, wx, level = weights[i], weighted_x[i], levels[i]
            removed_lx = sumlx - wx * level
            removed_l2 = suml2 - w * level * level
            new_level = nearest_int(x[i] * removed_l2 / removed_lx).clamp(-nmax, nmax - 1)
            slx = removed_lx + wx * new_level
            sl2 = removed_l2 + w * new_level * new_level
            accept = (removed_lx > 0) & (new_level != level) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            levels[i] = torch.where(accept, new_level, level)
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(suml2))
    levels = torch.where(zero, torch.zeros_like(levels), levels + nmax)
    return levels, torch.where(zero, torch.zeros_like(scale), scale)


def _first_absmax_rows(x: torch.Tensor) -> torch.Tensor:
    index = x.abs().argmax(dim=0, keepdim=True)
    return x.gather(0, index).squeeze(0)


def make_qp_quants(x: torch.Tensor, nmax: int, weights: torch.Tensor):
    """Non-negative levels 0..nmax and one scale for x (n, groups) >= 0, weighted (ggml's make_qp_quants).

    Used with an importance matrix for the sub-block scales and mins of Q4_K/Q5_K: start from
    nmax/max, try 8 nearby scales (kept when the weighted squared error is lower, in ggml's
    order), then up to 5 passes moving single levels to their least-squares value. As in
    make_q3_quants, running all 5 passes equals ggml's early exit. Returns (L, scale).
    """
    peak = positive_max(x, 0)
    zero = peak < GROUP_MAX_EPS
    iscale = scalar_over(nmax, peak)
    # ggml stores the first rounding in uint8_t without clamping (modulo 256).
    first = (nearest_int(iscale * x).to(torch.int32) & 0xFF).to(x.dtype)
    scale = 1 / iscale

    def mse(levels, this_scale):
        diff = x - this_scale * levels
        return sequential_sum(weights * diff * diff)

    best = mse(first, scale)
    for step in [s for s in range(-4, 5) if s != 0]:
        factor = float(np.float32(np.float32(0.1) * np.float32(step)) + np.float32(nmax))
        candidate_iscale = scalar_over(factor, peak)
        candidate = nearest_int(candidate_iscale * x).clamp(max=nmax)
        error = mse(candidate, 1 / candidate_iscale)
        better = error < best
        best = torch.where(better, error, best)
        iscale = torch.where(better, candidate_iscale, iscale)

    levels = nearest_int(iscale * x).clamp(max=nmax)
    wx = weights * x
    sumlx = sequential_sum(wx * levels)
    suml2 = sequential_sum(weights * levels * levels)
    for _ in range(5):
        for i in range(x.shape[0]):
            w, level = weights[i], levels[i]
            slx = sumlx - wx[i] * level
            sl2 = suml2 - w * level * level
            new_level = nearest_int(x[i] * sl2 / slx).clamp(max=nmax)
            slx_new = slx + wx[i] * new_level
            sl2_new = sl2 + w * new_level * new_level
            accept = ((slx > 0) & (sl2 > 0) & (new_level != level)
                      & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            levels[i] = torch.where(accept, new_level, level)
            sumlx = torch.where(accept, slx_new, sumlx)
            suml2 = torch.where(accept, sl2_new, suml2)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(suml2))
    levels = torch.where(zero, torch.zeros_like(levels), levels)
    return levels, torch.where(zero, torch.zeros_like(scale), scale)
