"""Kernels for the ternary types (TQ1_0, TQ2_0) and the FP4 types (MXFP4, NVFP4).

Each is a BlockFormat: per-block scales (float32, as gguf-py computes them) and an unpacker of
the integers q; FP4 values are unpacked doubled (integers), with the scale halved, as ggml does.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .blocks import (
    QK_K, BlockFormat, byte_index, crumb_planes, device_table, fp16_field, random_bytes, random_with_fp16_fields,
)
from . import blocks as shared


# --- TQ2_0: qs[64] (four 2-bit values per byte, q + 1), d -----------------------------------

def _unpack_tq2_0(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    crumbs = crumb_planes(blocks, 0, 64).view(torch.int8)
    crumbs.sub_(1)
    return crumbs.view(4, m, 2, 32).permute(1, 2, 0, 3)


def _scales_tq2_0(blocks: torch.Tensor):
    return fp16_field(blocks, 64).float(), None


# --- TQ1_0: qs[48] (five base-3 digits per byte), qh[4] (four digits per byte), d -------------
# A byte holds its digits as a fixed-point fraction of 243: digit k of byte b is the integer
# part of 3 * (b * 3^k mod 256) / 256. qs bytes 0-31 give elements k*32 + l (k = 0..4), bytes
# 32-47 elements 160 + k*16 + l, qh bytes elements 240 + k*4 + l (k = 0..3). Each byte's five
# digits minus one are looked up at once, as the int8 bytes of one int64 word.


@device_table
def _ternary_digits() -> np.ndarray:
    code = np.arange(256)
    digits = np.zeros((256, 8), dtype=np.int8)
    for k in range(5):
        digits[:, k] = ((code * 3**k) % 256 * 3 >> 8) - 1
    return digits.view("<i8").reshape(256)


@device_table
def _powers_of_three() -> np.ndarray:
    return np.array([1, 3, 9, 27, 81], dtype=np.uint8).reshape(5, 1)


def _unpack_tq1_0(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    m = blocks.shape[0]
    if shared.fused_arithmetic(blocks.device):
        words = _ternary_digits(blocks.device, torch.int64).index_select(0, byte_index(blocks[:, 0:52]))
        digits = words.view(torch.int8).view(m, 52, 8).permute(2, 0, 1)  # (digit, block, byte)
    else:
        # CPUs: arithmetic on the flat bytes is faster than the gather
        shifted = blocks.reshape(1, -1) * _powers_of_three(blocks.device, torch.uint8)
        # digit - 1 = floor((3x - 256) / 256), in int16 because 3x needs ten bits.
        digits = shifted.to(torch.int16).mul_(3).sub_(256).bitwise_right_shift_(8).view(5, m, 54)
    return (
        digits[0:5, :, 0:32].transpose(0, 1),
        digits[0:5, :, 32:48].transpose(0, 1),
        digits[0:4, :, 48:52].transpose(0, 1),
    )


def _scales_tq1_0(blocks: torch.Tensor):
    return fp16_field(blocks, 52).float(), None


# --- FP4 (E2M1) values, doubled so that they are integers: 0 1 2 3 4 6 8 12 and negatives ----
# Looked up per whole byte (both nibbles' values from one index): cheaper on a CPU than the
# dozen small integer ops that decode the format arithmetically.


def _e2m1_doubled(nibble: np.ndarray) -> np.ndarray:
    """Sign bit 3, exponent bits 2-1, mantissa bit 0 -> twice the E2M1 value (an integer).

    Exponent e > 0: 2^(e-1) * (1 + m/2), doubled (2 + m) << (e - 1); e = 0: subnormal m/2, doubled m.
    """
    sign = np.where(nibble & 8, -1, 1)
    exponent = (nibble >> 1) & 3
    mantissa = nibble & 1
    magnitude = np.where(exponent == 0, mantissa, (2 + mantissa) << np.maximum(exponent - 1, 0))
    return (sign * magnitude).astype(np.int8)


@device_table
def _e2m1_pairs() -> np.ndarray:
    """Per byte: the doubled FP4 values of its low and high nibble, as the int8 bytes of an int16."""
    code = np.arange(256)
    pairs = np.stack((_e2m1_doubled(code & 0x0F), _e2m1_doubled(code >> 4)), axis=-1)
    return pairs.view("<i2").reshape(256)


def _fp4_pairs(raw: torch.Tensor) -> torch.Tensor:
    """Accelerators: (m, w) bytes -> (m, w, 2) int8 doubled FP4 values of their low and high
    nibbles, one gather of both."""
    pairs = _e2m1_pairs(raw.device, torch.int16).index_select(0, byte_index(raw))
    return pairs.view(torch.int8).view(*raw.shape, 2)


def _fp4_as_float16(raw: torch.Tensor) -> torch.Tensor:
    """CPUs: (..., w) bytes -> (..., 2, w) float16, the doubled FP4 values of their low and high
    nibbles times 2^-15, exactly: a nibble's exponent and mantissa bits placed as fp16's lowest two
    exponent bits and top mantissa bit give E2M1 times 2^-14, normal and subnormal alike (a dozen
    int16 ops on flat runs: twice as fast here as two byte-table gathers). Its sign goes to the
    sign bit, except for the nibble 1000: ggml reads it as +0, not -0."""
    x = raw.to(torch.int16)
    halves = []
    for low_bit in (0, 4):  # the nibble at bits low_bit..low_bit+3 of x
        magnitude = x << (9 - low_bit) if low_bit < 9 else x >> (low_bit - 9)
        magnitude &= 0x0E00
        nonzero = x & (7 << low_bit)  # sign only where the magnitude is not zero
        nonzero += 7 << low_bit
        nonzero &= x
        nonzero <<= 12 - low_bit
        nonzero &= -0x8000
        magnitude |= nonzero
        halves.append(magnitude)
    return torch.stack(halves, dim=-2).view(torch.float16)


# MXFP4: e (E8M0 exponent byte), qs[16]: element l is the low nibble of qs[l], 16 + l the high.
# The scale is 2^(e - 127) halved, because the FP4 values are doubled.


@device_table
def _e8m0_half() -> np.ndarray:
    exponent = np.arange(256, dtype=np.uint32)
    # e = 0 and 1 give subnormal floats (2^-128, 2^-127); the rest normal ones with exponent e - 1.
    bits = np.where(exponent < 2, np.uint32(0x00200000) << exponent, (exponent - 1) << 23)
    return bits.astype(np.uint32).view(np.float32)


def _unpack_mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    raw = blocks[:, 1:17]
    if shared.fused_arithmetic(raw.device):
        return _fp4_pairs(raw).transpose(1, 2)
    return _fp4_as_float16(raw)


def _scales_mxfp4(blocks: torch.Tensor):
    return _e8m0_half(blocks.device, torch.float32).index_select(0, byte_index(blocks[:, 0])).view(-1, 1), None


# NVFP4: 4 UE4M3 scale bytes, then 4 sub-blocks of 8 bytes: element 16s + l is the low nibble
# of byte 8s + l, element 16s + 8 + l the high nibble. Scales are halved for the doubled values.


@device_table
def _ue4m3_half() -> np.ndarray:
    code = np.arange(256)
    exponent = (code >> 3) & 0x0F
    mantissa = code & 0x07
    subnormal = mantissa * 2.0**-9
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent - 7.0)
    value = np.where(exponent == 0, subnormal, normal) * 0.5
    # 0x7F is E4M3's NaN; ggml reads it (and zero) as a zero scale.
    value[(code == 0) | (code == 0x7F)] = 0.0
    return value.astype(np.float32)


def _unpack_nvfp4(blocks: torch.Tensor) -> torch.Tensor:
    m = blocks.shape[0]
    raw = blocks[:, 4:36]
    if shared.fused_arithmetic(raw.device):
        return _fp4_pairs(raw).view(m, 4, 8, 2).transpose(2, 3)
    return _fp4_as_float16(raw.view(m, 4, 8))


def _scales_nvfp4(blocks: torch.Tensor):
    return _ue4m3_half(blocks.device, torch.float32).index_select(0, byte_index(blocks[:, 0:4])).view(-1, 4), None


# widest: TQ1_0 multiplies every byte by 5 powers of three (CPUs), TQ2_0 splits every byte in 4.


def _random_mxfp4(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    blocks = random_bytes(rng, n_blocks, T.MXFP4)
    blocks[:, 0] = rng.integers(112, 125, n_blocks)  # halved scale 2^-16 .. 2^-4, |w| <= 12 * 2^-4
    return blocks


def _random_nvfp4(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    blocks = random_bytes(rng, n_blocks, T.NVFP4)
    blocks[:, 0:4] = rng.integers(0x01, 0x20, (n_blocks, 4))  # E4M3 up to 2^-4 * 1.875, |w| <= 0.71
    return blocks


TYPES = {
    T.TQ1_0: (
        BlockFormat(QK_K, scales=_scales_tq1_0, unpack=_unpack_tq1_0, widest=5 * 54),
        random_with_fp16_fields(T.TQ1_0, {52: (1.0, False)}),
    ),
    # q reaches 2
    T.TQ2_0: (
        BlockFormat(QK_K, scales=_scales_tq2_0, unpack=_unpack_tq2_0, widest=4 * 64),
        random_with_fp16_fields(T.TQ2_0, {64: (0.5, False)}),
    ),
    # 1M-element chunks on CPUs: their int16 decoding ran 5-10% slower in the 2M default (measured in-process)
    T.MXFP4: (BlockFormat(32, scales=_scales_mxfp4, unpack=_unpack_mxfp4, cpu_q_factor=2.0**15,
                          cpu_chunk_elements=1 << 20), _random_mxfp4),
    # NVFP4's halved scales are at most 224 and at least 2^-10 (or 0): times 2^15 stays exact
    T.NVFP4: (BlockFormat(64, scales=_scales_nvfp4, unpack=_unpack_nvfp4, cpu_q_factor=2.0**15,
                          cpu_q_factor_in_scale=True, cpu_chunk_elements=1 << 20), _random_nvfp4),
}
