"""Kernels for the float types and the 32-element legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)."""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from .blocks import (
    BlockFormat, Scales, Unpack, byte_index, device_table, fp16_field, nibble_planes, planes_to_blocks,
    random_with_fp16_fields,
)

# --- float types --------------------------------------------------------------------------

def _float_kernel(source_dtype: torch.dtype):
    itemsize = torch.empty((), dtype=source_dtype).element_size()

    def kernel(blocks: torch.Tensor, out: torch.Tensor) -> None:
        raw = blocks
        if not raw.is_contiguous() or raw.storage_offset() % itemsize:
            raw = raw.clone(memory_format=torch.contiguous_format)
        source = raw.view(source_dtype)
        if source_dtype == torch.bfloat16 and out.dtype == torch.float16 and out.device.type == "cpu":
            _through_float32(source.reshape(-1), out.view(-1))
        else:
            out.copy_(source)

    return kernel


# elements per float32 piece of a bfloat16 -> float16 copy on CPUs (4 MB, in cache)
_FLOAT32_PIECE = 1 << 20


def _through_float32(source: torch.Tensor, out: torch.Tensor) -> None:
    """bfloat16 -> float16 on CPUs in float32 pieces: torch's direct copy converts through float32
    anyway (so the bits are the same), one element at a time; two vectorised copies per piece were
    measured 20% faster (6.7 vs 8.4 ms for a 10240x3840 weight)."""
    scratch = torch.empty(min(_FLOAT32_PIECE, source.numel()), dtype=torch.float32)
    for start in range(0, source.numel(), _FLOAT32_PIECE):
        piece = scratch[: min(_FLOAT32_PIECE, source.numel() - start)]
        piece.copy_(source[start : start + _FLOAT32_PIECE])
        out[start : start + _FLOAT32_PIECE].copy_(piece)


def _random_floats(numpy_dtype: str):
    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        values = rng.uniform(-1.0, 1.0, n_blocks).astype(np.float32)
        if numpy_dtype == "bf16":
            return (values.view(np.uint32) >> 16).astype("<u2").view(np.uint8).reshape(n_blocks, 2)
        return values.astype(numpy_dtype).view(np.uint8).reshape(n_blocks, -1)

    return generate


# --- 32-element legacy quants --------------------------------------------------------------
# Block layouts (ggml block_q*): an fp16 scale d (and fp16 min m for the _1 variants), for the
# 5-bit types 4 bytes holding the 32 fifth bits as one little-endian uint32 (bit j belongs to
# element j), then 16 bytes of nibbles: byte i holds element i (low nibble) and i+16 (high).
# gguf-py computes d * (q - 8) / d * (q - 16) with the offset inside the integer, and
# d * q + m for the _1 types; the unpackers and scales below follow that.


@device_table
def _fifth_bit_minus_16() -> np.ndarray:
    """Q5_0, per qh byte: its 8 bits as 8 bytes (int64 little-endian) of 0 (bit set) or -16 (clear).

    Added to the nibble in uint8 (wrapping), this gives q - 16 as int8 directly.
    """
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return np.where(bits == 1, 0, 240).astype(np.uint8).view("<i8").reshape(256)


@device_table
def _fifth_bit_16() -> np.ndarray:
    """Q5_1, per qh byte: its 8 bits as 8 bytes (int64 little-endian) of 16 (bit set) or 0."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return (bits * 16).astype(np.uint8).view("<i8").reshape(256)


def _nibble_quants(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """(m, 2, 16) uint8 nibbles of the 16 bytes at `start`: low nibbles, then high."""
    return planes_to_blocks(nibble_planes(blocks, start, start + 16))


def _unpack_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibble_quants(blocks, 2).view(torch.int8)
    q.sub_(8)
    return q


def _unpack_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _nibble_quants(blocks, 4)


def _five_bit_unpacker(table, qh_start: int):
    """q = nibble + table entry of its bit of qh (4 bytes, element j: byte j // 8, bit j % 8)."""

    def unpack(blocks: torch.Tensor) -> torch.Tensor:
        m = blocks.shape[0]
        fifth = table(blocks.device, torch.int64).index_select(0, byte_index(blocks[:, qh_start : qh_start + 4]))
        q = _nibble_quants(blocks, qh_start + 4)
        q += fifth.view(torch.uint8).view(m, 2, 16)
        return q.view(torch.int8)

    return unpack


def _unpack_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:34].view(torch.int8)


def _fp16_scales(scale_at: int, min_at: int | None = None) -> Scales:
    """Scales of w = d * q [+ m] with fp16 d (and m) at the given byte offsets of each block."""

    def scales(blocks: torch.Tensor):
        return fp16_field(blocks, scale_at).float(), None if min_at is None else fp16_field(blocks, min_at).float()

    return scales


def _legacy(ggml_type: T, unpack: Unpack, scales: Scales, nibbles: bool = True) -> BlockFormat:
    """Nibble unpackers split every byte of a block in two: 2 * type_size elements."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return BlockFormat(block_size, scales=scales, unpack=unpack, widest=2 * type_size if nibbles else 0)



# Scale bounds keep |w| below about 1: |q| <= 8, 16, 128 for the 4-, 5- and 8-bit types;
# the unsigned types add a min of at most 0.5 to d * q <= 15 d or 31 d.
TYPES = {
    T.F32: (_float_kernel(torch.float32), _random_floats("<f4")),
    T.F16: (_float_kernel(torch.float16), _random_floats("<f2")),
    T.BF16: (_float_kernel(torch.bfloat16), _random_floats("bf16")),
    T.Q4_0: (
        _legacy(T.Q4_0, _unpack_q4_0, _fp16_scales(0)),
        random_with_fp16_fields(T.Q4_0, {0: (1 / 8, True)}),
    ),
    T.Q4_1: (
        _legacy(T.Q4_1, _unpack_q4_1, _fp16_scales(0, 2)),
        random_with_fp16_fields(T.Q4_1, {0: (1 / 30, False), 2: (0.5, True)}),
    ),
    T.Q5_0: (
        _legacy(T.Q5_0, _five_bit_unpacker(_fifth_bit_minus_16, 2), _fp16_scales(0)),
        random_with_fp16_fields(T.Q5_0, {0: (1 / 16, True)}),
    ),
    T.Q5_1: (
        _legacy(T.Q5_1, _five_bit_unpacker(_fifth_bit_16, 4), _fp16_scales(0, 2)),
        random_with_fp16_fields(T.Q5_1, {0: (1 / 62, False), 2: (0.5, True)}),
    ),
    T.Q8_0: (
        _legacy(T.Q8_0, _unpack_q8_0, _fp16_scales(0), nibbles=False),
        random_with_fp16_fields(T.Q8_0, {0: (1 / 128, True)}),
    ),
}
