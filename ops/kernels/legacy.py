"""Kernels for the float types and the 32-element legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).

Also home of what every kernel module here shares: the chunked driver, fp16 field reading,
bit-plane extraction and per-(device, dtype) table caching.

Every quantized type here dequantizes as w = scale * q [+ offset], with one scale (and offset)
per block or sub-block and q a small integer. A kernel therefore supplies only
  - the per-(sub-)block scale and offset, float32, computed once for all blocks, and
  - a function that unpacks a chunk of blocks into integers q, in output order;
the driver does the float arithmetic in float32, in gguf-py's order (scale, then times q, then
plus offset), so its float32 result is gguf-py's bit for bit; other dtypes get that float32
result rounded once.

Why chunks: a full-size intermediate costs a trip to main memory (and page faults when freshly
allocated); chunks keep every intermediate in cache, so the raw bytes are read once and the
output written once. Integers are unpacked with uint8/int8 ops (one byte per element, cheapest);
float work happens in a float32 scratch chunk, which is also faster on CPUs than integer to
float16 conversion.
"""
from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# Unpacks (m, type_size) uint8 blocks into (m, block_size) integers in output element order.
Unpack = Callable[[torch.Tensor], torch.Tensor]

# At most torch's intra-op grain size (32768), so that every op on a CPU chunk runs on the
# calling thread: the driver spreads chunks over its own threads instead (see below).
CPU_CHUNK_ELEMENTS = 1 << 15
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=None)
def _helper_pool(n_helpers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n_helpers, thread_name_prefix="zimage-dequant")


def dequantize_blocks(
    blocks: torch.Tensor,
    dtype: torch.dtype,
    block_size: int,
    unpack: Unpack,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, type_size) uint8 blocks -> (n, block_size) `dtype` values scale * q [+ offset].

    `scale` and `offset` are float32 (n, n_sub): one value per equal run of block_size / n_sub
    elements.

    On a CPU the chunks are shared out between the calling thread and torch.get_num_threads() - 1
    helper threads, each taking the next chunk when done (torch ops release the GIL). torch's
    own intra-op threading would instead put a barrier after every op; on a busy machine a
    descheduled thread then stalls each of the thousands of small ops.
    """
    n_blocks = blocks.shape[0]
    n_sub = scale.shape[1]
    device = blocks.device
    out = torch.empty((n_blocks, block_size), dtype=dtype, device=device)
    on_cpu = device.type == "cpu"
    rows = max(1, (CPU_CHUNK_ELEMENTS if on_cpu else ACCELERATOR_CHUNK_ELEMENTS) // block_size)
    scale = scale.unsqueeze(-1)
    offset = None if offset is None else offset.unsqueeze(-1)
    starts = itertools.count(0, rows)  # shared by all threads; next() is atomic under the GIL

    def work() -> None:
        scratch = None
        if dtype != torch.float32:
            scratch = torch.empty((min(rows, n_blocks), block_size), dtype=torch.float32, device=device)
        for start in starts:
            if start >= n_blocks:
                return
            stop = start + rows
            chunk = blocks[start:stop]
            m = chunk.shape[0]
            values = out[start:stop] if scratch is None else scratch[:m]
            values.copy_(unpack(chunk))
            sub_blocks = values.view(m, n_sub, block_size // n_sub)
            sub_blocks.mul_(scale[start:stop])
            if offset is not None:
                sub_blocks.add_(offset[start:stop])
            if scratch is not None:
                out[start:stop].copy_(values)

    n_helpers = min(torch.get_num_threads(), -(-n_blocks // rows)) - 1 if on_cpu else 0
    helpers = [_helper_pool(n_helpers).submit(work) for _ in range(n_helpers)] if n_helpers > 0 else []
    work()
    for helper in helpers:
        helper.result()
    return out


def fp16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte `offset` of every block, as a float32 (n, 1) tensor."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


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


def nibbles(raw: torch.Tensor, width: int) -> torch.Tensor:
    """(m, g*width) bytes -> (m, g*2*width) uint8: per group, the low nibbles, then the high ones."""
    grouped = raw.reshape(raw.shape[0], -1, width)
    return torch.stack((grouped & 0x0F, grouped >> 4), dim=2).view(raw.shape[0], -1)


def random_fp16(rng: np.random.Generator, n_blocks: int, magnitude: float, signed: bool = True) -> np.ndarray:
    """(n_blocks, 2) bytes of little-endian fp16 values drawn uniformly from [0, magnitude], random sign if `signed`."""
    values = rng.uniform(0.0, magnitude, n_blocks)
    if signed:
        values *= rng.choice(np.array([-1.0, 1.0]), n_blocks)
    return values.astype("<f2").view(np.uint8).reshape(n_blocks, 2)


def random_bytes(rng: np.random.Generator, n_blocks: int, ggml_type: T) -> np.ndarray:
    return rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)


def random_with_fp16_fields(ggml_type: T, fields: dict[int, tuple[float, bool]]):
    """Random blocks whose fp16 fields at the given byte offsets hold (magnitude, signed) values."""

    def generate(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        blocks = random_bytes(rng, n_blocks, ggml_type)
        for offset, (magnitude, signed) in fields.items():
            blocks[:, offset : offset + 2] = random_fp16(rng, n_blocks, magnitude, signed)
        return blocks

    return generate


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
# gguf-py computes d * (q - 8) / d * (q - 16) with the offset inside the integer, and
# d * q + m for the _1 types; the unpackers and scale/offset below follow that.


def _five_bit_quants(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """(m, 4) qh bytes and (m, 16) nibble bytes -> (m, 32) uint8 q in 0..31.

    Read as a little-endian uint32, qh's bit j is element j's fifth bit: byte j // 8, bit j % 8.
    """
    m = qs.shape[0]
    fifth = (bit_planes(qh) << 4).transpose(1, 2).reshape(m, 32)
    return nibbles(qs, 16) | fifth


def _unpack_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return nibbles(blocks[:, 2:18], 16).view(torch.int8) - 8


def _unpack_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return nibbles(blocks[:, 4:20], 16)


def _unpack_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    return _five_bit_quants(blocks[:, 2:6], blocks[:, 6:22]).view(torch.int8) - 16


def _unpack_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return _five_bit_quants(blocks[:, 4:8], blocks[:, 8:24])


def _unpack_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:34].view(torch.int8)


def _scaled(block_size: int, unpack: Unpack, scale_offset: int, min_offset: int | None = None):
    """Kernel for w = d * q [+ m] with fp16 d (and m) at the given byte offsets of each block."""

    def kernel(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        minimum = None if min_offset is None else fp16_field(blocks, min_offset)
        return dequantize_blocks(blocks, dtype, block_size, unpack, fp16_field(blocks, scale_offset), minimum)

    return kernel


KERNELS = {
    T.F32: _float_kernel(torch.float32),
    T.F16: _float_kernel(torch.float16),
    T.BF16: _float_kernel(torch.bfloat16),
    T.Q4_0: _scaled(32, _unpack_q4_0, 0),
    T.Q4_1: _scaled(32, _unpack_q4_1, 0, 2),
    T.Q5_0: _scaled(32, _unpack_q5_0, 0),
    T.Q5_1: _scaled(32, _unpack_q5_1, 0, 2),
    T.Q8_0: _scaled(32, _unpack_q8_0, 0),
}

# Scale bounds keep |w| below about 1: |q| <= 8, 16, 128 for the 4-, 5- and 8-bit types;
# the unsigned types add a min of at most 0.5 to d * q <= 15 d or 31 d.
RANDOM_BLOCKS = {
    T.F32: _random_floats("<f4"),
    T.F16: _random_floats("<f2"),
    T.BF16: _random_floats("bf16"),
    T.Q4_0: random_with_fp16_fields(T.Q4_0, {0: (1 / 8, True)}),
    T.Q4_1: random_with_fp16_fields(T.Q4_1, {0: (1 / 30, False), 2: (0.5, True)}),
    T.Q5_0: random_with_fp16_fields(T.Q5_0, {0: (1 / 16, True)}),
    T.Q5_1: random_with_fp16_fields(T.Q5_1, {0: (1 / 62, False), 2: (0.5, True)}),
    T.Q8_0: random_with_fp16_fields(T.Q8_0, {0: (1 / 128, True)}),
}
