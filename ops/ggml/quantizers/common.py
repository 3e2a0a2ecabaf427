"""What the quantizers share: ggml's rounding, its left-to-right sums, fp16 fields and bit packing.

Bytes equal to ggml's reference quantizers need ggml's float32 arithmetic, operation for
operation: ggml-quants.c is compiled without FMA contraction or reassociation, so every `a*b*c`
there is two roundings, and every accumulation loop `s += t[i]` is a left-to-right sum. Torch's
own reductions (`sum`) add in a different order; where a sum decides a choice (which scale
candidate wins, which rounding an element takes) a different order flips the choice for some
blocks. So the sums here are written as loops over the element index (16 or 32 steps, each one
op over every (sub-)block at once), with the element index as the leading dimension so that each
step reads a contiguous row.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

# ggml's threshold below which a group counts as all zero (GROUP_MAX_EPS).
GROUP_MAX_EPS = 1e-15


def nearest_int(values: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int (adding 1.5 * 2**23): round half to even, as a float tensor."""
    return torch.round(values)


def sequential_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the LEADING dimension left to right from 0.0, as `float s = 0; s += t[i]` does."""
    total = terms[0] + 0.0
    for term in terms[1:]:
        total += term
    return total


def sequential_sum_from_first(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the leading dimension left to right, starting from the first term (`s = t[0]`)."""
    total = terms[0].clone()
    for term in terms[1:]:
        total += term
    return total


def first_absmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The signed value of the first element of largest magnitude along `dim` (ggml's `max`)."""
    index = x.abs().argmax(dim=dim, keepdim=True)
    return x.gather(dim, index).squeeze(dim)


def positive_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """ggml's `m = 0; if (v > m) m = v` over `dim`: the largest value, or +0.0 if none is positive."""
    largest = x.amax(dim=dim)
    return torch.where(largest > 0, largest, torch.zeros_like(largest))


def scalar_over(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, one rounding. (`python_number / tensor` is computed by torch as
    number * reciprocal(tensor): two roundings, a different float for about a quarter of values.)"""
    return torch.div(denominator.new_tensor(float(np.float32(numerator))), denominator)


def correctly_rounded_sqrt(values: torch.Tensor) -> torch.Tensor:
    """C's sqrtf (IEEE: correctly rounded) for finite values >= 0.

    torch.sqrt on CPU is off by one unit in the last place for about a fifth of float32 inputs
    (measured: torch 2.13, AVX-512). The estimate is corrected against the exact residual
    v - s*s (Dekker's product: s*s = p + e with both parts floats), compared with the squares of
    the midpoints to the neighbouring floats.
    """
    s = torch.sqrt(values)
    split = s * 4097.0
    hi = split - (split - s)
    lo = s - hi
    square = s * s
    square_error = ((hi * hi - square) + 2 * hi * lo) + lo * lo
    residual = (values - square) - square_error  # values - s*s
    up = torch.nextafter(s, torch.full_like(s, float("inf"))) - s
    down = s - torch.nextafter(s, torch.zeros_like(s))
    s = torch.where(residual > s * up + up * up / 4, s + up, s)
    return torch.where(residual < down * down / 4 - s * down, s - down, s)


def fp16_round(values: torch.Tensor) -> torch.Tensor:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)): round to half (to nearest even), back to float32."""
    return values.to(torch.float16).to(torch.float32)


def fp16_bytes(values: torch.Tensor) -> torch.Tensor:
    """float32 (m,) -> (m, 2) uint8, the little-endian fp16 field."""
    return values.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def as_bytes(values: torch.Tensor) -> torch.Tensor:
    """Small non-negative integers held in a float or int tensor -> uint8."""
    return values.to(torch.int32).to(torch.uint8)


@functools.lru_cache(maxsize=None)
def _shifts(device: torch.device, count: int, width: int) -> torch.Tensor:
    return (torch.arange(count, dtype=torch.int32) * width).to(device)


def pack_fields(fields: torch.Tensor, width: int) -> torch.Tensor:
    """(..., k) small integers -> (...,) uint8 of field j at bits width*j (k * width <= 8)."""
    shifted = fields.to(torch.int32) << _shifts(fields.device, fields.shape[-1], width)
    return shifted.sum(dim=-1).to(torch.uint8)


def elements_first(x: torch.Tensor) -> torch.Tensor:
    """(groups, n) -> (n, groups) contiguous: the element index leads, as the loops above need."""
    return x.t().contiguous()
