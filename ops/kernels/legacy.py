"""Kernels for the float types and the 32-element legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).

Also home of the helpers every kernel module here shares: the chunked driver that writes
straight into the final output, fp16 field reading and per-(device, dtype) table caching.

Why the driver works in chunks: on a CPU, a full-size intermediate costs a trip to main memory
(and page faults when it is freshly allocated); chunks of a few hundred KiB keep every
intermediate in cache, so only the raw bytes are read and the output is written once.
Accelerators get large chunks, where launch count matters more than cache.

Exactness: each kernel lists the dtypes in which its arithmetic is exact enough to run
directly in the output dtype (the result is then the float32 result rounded once, i.e. the
float32 result cast). Any other output dtype is computed in a float32 scratch chunk and cast,
so every dtype equals gguf-py's float32 result cast to that dtype.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# A fill function writes the dequantized values of `blocks` (uint8, (m, type_size)) into
# `out` ((m, block_size), float32 or an output dtype the kernel declared exact).
Fill = Callable[[torch.Tensor, torch.Tensor], None]

CPU_CHUNK_ELEMENTS = 1 << 16
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24


def run_chunked(
    blocks: torch.Tensor,
    dtype: torch.dtype,
    block_size: int,
    fill: Fill,
    exact_dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> torch.Tensor:
    """Allocate the (n_blocks, block_size) output once and let `fill` write it chunk by chunk."""
    n_blocks = blocks.shape[0]
    device = blocks.device
    out = torch.empty((n_blocks, block_size), dtype=dtype, device=device)
    budget = CPU_CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    rows = max(1, budget // block_size)
    scratch = None
    if dtype not in exact_dtypes and dtype != torch.float32:
        scratch = torch.empty((min(rows, n_blocks), block_size), dtype=torch.float32, device=device)
    for start in range(0, n_blocks, rows):
        chunk = blocks[start : start + rows]
        target = out[start : start + rows]
        if scratch is None:
            fill(chunk, target)
        else:
            staged = scratch[: chunk.shape[0]]
            fill(chunk, staged)
            target.copy_(staged)
    return out


def fp16_field(blocks: torch.Tensor, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """The little-endian fp16 at byte `offset` of every block, as a (m, 1) tensor of `dtype`."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).to(dtype)


def device_table(build: Callable[[], np.ndarray]):
    """Decorator: a constant table built once (numpy, on the host) and cached per (device, dtype)."""

    @functools.lru_cache(maxsize=None)
    def on_device(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(build()).to(device=device, dtype=dtype)

    return on_device


def byte_index(raw: torch.Tensor) -> torch.Tensor:
    """Flatten uint8 bytes into int32 indices for index_select (int32: no int64 intermediate)."""
    return raw.reshape(-1).to(torch.int32)


@device_table
def _crumb_shifts() -> np.ndarray:
    return np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)


@device_table
def _bit_shifts() -> np.ndarray:
    return np.arange(8, dtype=np.uint8).reshape(8, 1)


def crumb_planes(raw: torch.Tensor, width: int = 32) -> torch.Tensor:
    """(m, g*width) bytes -> (m, g, 4, width) uint8: plane k holds bits 2k..2k+1 of each byte of group g."""
    grouped = raw.reshape(raw.shape[0], -1, 1, width)
    return (grouped >> _crumb_shifts(raw.device, torch.uint8)) & 3


def bit_planes(raw: torch.Tensor) -> torch.Tensor:
    """(m, w) bytes -> (m, 8, w) uint8 of 0/1: plane j holds bit j of each byte."""
    return (raw.unsqueeze(1) >> _bit_shifts(raw.device, torch.uint8)) & 1


def random_fp16(rng: np.random.Generator, n_blocks: int, magnitude: float, signed: bool = True) -> np.ndarray:
    """(n_blocks, 2) bytes of little-endian fp16 values drawn uniformly from [0, magnitude], random sign if `signed`."""
    values = rng.uniform(0.0, magnitude, n_blocks)
    if signed:
        values *= rng.choice(np.array([-1.0, 1.0]), n_blocks)
    return values.astype("<f2").view(np.uint8).reshape(n_blocks, 2)


def random_bytes(rng: np.random.Generator, n_blocks: int, ggml_type: T) -> np.ndarray:
    return rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)


# --- float types --------------------------------------------------------------------------

def _float_kernel(source_dtype: torch.dtype):
    itemsize = torch.empty((), dtype=source_dtype).element_size()

    def kernel(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raw = blocks
        if not raw.is_contiguous() or raw.storage_offset() % itemsize:
            raw = raw.clone(memory_format=torch.contiguous_format)
        # Always a fresh tensor, like every quantized kernel: callers may modify it in place.
        return raw.view(source_dtype).to(dtype, copy=True)

    return kernel


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


def _fill_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d = fp16_field(blocks, 0, out.dtype)
    qs = blocks[:, 2:18]
    halves = out.view(-1, 2, 16)
    halves[:, 0].copy_((qs & 0x0F).view(torch.int8) - 8)
    halves[:, 1].copy_((qs >> 4).view(torch.int8) - 8)
    out.mul_(d)


def _fill_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d = fp16_field(blocks, 0, out.dtype)
    m = fp16_field(blocks, 2, out.dtype)
    qs = blocks[:, 4:20]
    halves = out.view(-1, 2, 16)
    halves[:, 0].copy_(qs & 0x0F)
    halves[:, 1].copy_(qs >> 4)
    out.mul_(d).add_(m)


def _five_bit_quants(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """(m, 4) qh bytes and (m, 16) nibble bytes -> (m, 32) uint8 q in 0..31.

    Read as a little-endian uint32, qh's bit j is element j's fifth bit: byte j // 8, bit j % 8.
    """
    m = qs.shape[0]
    q = (bit_planes(qh) << 4).transpose(1, 2).reshape(m, 2, 16)
    q[:, 0] |= qs & 0x0F
    q[:, 1] |= qs >> 4
    return q.view(m, 32)


def _fill_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d = fp16_field(blocks, 0, out.dtype)
    out.copy_(_five_bit_quants(blocks[:, 2:6], blocks[:, 6:22]).view(torch.int8) - 16)
    out.mul_(d)


def _fill_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d = fp16_field(blocks, 0, out.dtype)
    m = fp16_field(blocks, 2, out.dtype)
    out.copy_(_five_bit_quants(blocks[:, 4:8], blocks[:, 8:24]))
    out.mul_(d).add_(m)


def _fill_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    d = fp16_field(blocks, 0, out.dtype)
    out.copy_(blocks[:, 2:34].view(torch.int8))
    out.mul_(d)


# d * q with q a small integer is exact in float32, so computing it in float16 rounds once,
# exactly as casting the float32 result does. d * q + m rounds twice and needs float32.
_SCALE_ONLY_EXACT = (torch.float32, torch.float16)


def _quant_kernel(ggml_type: T, fill: Fill, exact_dtypes=(torch.float32,)):
    block_size = GGML_QUANT_SIZES[ggml_type][0]

    def kernel(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return run_chunked(blocks, dtype, block_size, fill, exact_dtypes)

    kernel.__name__ = f"dequantize_{ggml_type.name.lower()}"
    return kernel


def _random_with_fp16_fields(ggml_type: T, fields: dict[int, tuple[float, bool]]):
    """Random blocks whose fp16 fields at the given byte offsets hold (magnitude, signed) values."""

    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = random_bytes(rng, n_blocks, ggml_type)
        for offset, (magnitude, signed) in fields.items():
            blocks[:, offset : offset + 2] = random_fp16(rng, n_blocks, magnitude, signed)
        return blocks

    return generate


KERNELS = {
    T.F32: _float_kernel(torch.float32),
    T.F16: _float_kernel(torch.float16),
    T.BF16: _float_kernel(torch.bfloat16),
    T.Q4_0: _quant_kernel(T.Q4_0, _fill_q4_0, _SCALE_ONLY_EXACT),
    T.Q4_1: _quant_kernel(T.Q4_1, _fill_q4_1),
    T.Q5_0: _quant_kernel(T.Q5_0, _fill_q5_0, _SCALE_ONLY_EXACT),
    T.Q5_1: _quant_kernel(T.Q5_1, _fill_q5_1),
    T.Q8_0: _quant_kernel(T.Q8_0, _fill_q8_0, _SCALE_ONLY_EXACT),
}

# Scale bounds keep |w| below about 1: |q| <= 8, 16, 128 for the 4-, 5- and 8-bit types;
# the unsigned types add a min of at most 0.5 to d * q <= 15 d or 31 d.
RANDOM_BLOCKS = {
    T.F32: _random_floats("<f4"),
    T.F16: _random_floats("<f2"),
    T.BF16: _random_floats("bf16"),
    T.Q4_0: _random_with_fp16_fields(T.Q4_0, {0: (1 / 8, True)}),
    T.Q4_1: _random_with_fp16_fields(T.Q4_1, {0: (1 / 30, False), 2: (0.5, True)}),
    T.Q5_0: _random_with_fp16_fields(T.Q5_0, {0: (1 / 16, True)}),
    T.Q5_1: _random_with_fp16_fields(T.Q5_1, {0: (1 / 62, False), 2: (0.5, True)}),
    T.Q8_0: _random_with_fp16_fields(T.Q8_0, {0: (1 / 128, True)}),
}
